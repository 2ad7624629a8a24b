"""Seal and audit each 5-minute window of Weir's PostgreSQL sink.

Weir loads PostgreSQL continuously and exactly once (the `users` sink of
topology/users.toml). This DAG is the scheduler that closes the books: its run for the data
interval [t, t+5m) acts on exactly that window.

1. ``wait_until_sealable``: polls ``GET /api/windows/{t}/sealable`` until the sink's watermark
   has passed the window's end plus its grace period (times out after 15 minutes).
2. ``seal``: ``POST /api/windows/{t}/seal`` with the admin token; idempotent.
3. ``audit``: ``POST /api/windows/{t}/audit?run_id=<this run>``: Weir compares the clean
   topic's committed records in the window with the sink's ledger, window counts and table
   rows, and stores the verdict with this run's id in the ``audits`` table; the task reads the
   stored row back through the Postgres connection and fails, red, on a mismatch with the
   numbers in its log.

Connections (from the environment, never from code): ``weir_api`` (HTTP: host and port of
Weir's server, the admin token as its password) and ``weir_db`` (the application database).
deploy/dev sets both as ``AIRFLOW_CONN_WEIR_API`` and ``AIRFLOW_CONN_WEIR_DB``.

One run at a time; missed intervals catch up in order from ``WEIR_AIRFLOW_START_DATE``
(deploy/dev sets it to when the stack was first started).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from urllib.parse import quote

import pendulum
from airflow.exceptions import AirflowFailException
from airflow.providers.http.hooks.http import HttpHook
from airflow.providers.http.sensors.http import HttpSensor
from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk import DAG, task
from airflow.timetables.interval import CronDataIntervalTimetable

DAG_ID = "user_window_seal_audit"
WEIR_API = "weir_api"
WEIR_DB = "weir_db"
# the window's start as Weir's API takes it: RFC 3339 in UTC
WINDOW = "{{ data_interval_start.in_timezone('UTC').strftime('%Y-%m-%dT%H:%M:%SZ') }}"

START_DATE = pendulum.parse(os.environ.get("WEIR_AIRFLOW_START_DATE", "2026-11-01T00:00:00Z"))


def _window(data_interval_start) -> str:
    return data_interval_start.in_timezone("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _admin_call(method: str, endpoint: str) -> dict:
    """Calls Weir's admin API with the token from the weir_api connection (masked in logs)."""
    token = HttpHook.get_connection(WEIR_API).password
    if not token:
        raise AirflowFailException(
            "the weir_api connection has no password: set it to Weir's admin token (WEIR_ADMIN_TOKEN)"
        )
    hook = HttpHook(method=method, http_conn_id=WEIR_API)
    response = hook.run(
        endpoint,
        headers={"Authorization": f"Bearer {token}"},
        extra_options={"check_response": False, "timeout": 120},
    )
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:500]}
    if response.status_code >= 400:
        raise AirflowFailException(
            f"{method} {endpoint}: HTTP {response.status_code}: {body.get('error', body)}"
        )
    return body


with DAG(
    dag_id=DAG_ID,
    description="Seal and audit each 5-minute window of Weir's exactly-once PostgreSQL sink",
    schedule=CronDataIntervalTimetable("*/5 * * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=True,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    tags=["weir"],
    doc_md=__doc__,
) as dag:
    wait_until_sealable = HttpSensor(
        task_id="wait_until_sealable",
        http_conn_id=WEIR_API,
        method="GET",
        endpoint=f"api/windows/{WINDOW}/sealable",
        response_check=lambda response: response.json().get("sealable") is True,
        poke_interval=15,
        timeout=15 * 60,
        mode="reschedule",
    )

    @task
    def seal(data_interval_start=None, run_id=None) -> dict:
        window = _window(data_interval_start)
        body = _admin_call("POST", f"api/windows/{window}/seal?by={quote('airflow:' + run_id, safe='')}")
        w = body["window"]
        print(
            f"window {window} {'was already' if body.get('already_sealed') else 'is now'} sealed: "
            f"{w.get('records')} records, {w.get('table_rows')} table rows, watermark {body.get('watermark')}"
        )
        return {"window_start": window, "table_rows": w.get("table_rows")}

    @task
    def audit(data_interval_start=None, run_id=None) -> dict:
        window = _window(data_interval_start)
        report = _admin_call("POST", f"api/windows/{window}/audit?run_id={quote(run_id, safe='')}")
        numbers = (
            f"topic records {report.get('topic_records')}, ledger {report.get('ledger_records')}, "
            f"window {report.get('window_records')}, table rows {report.get('table_rows')}, "
            f"late dead letter/dropped/accepted {report.get('late_dead_letter')}/"
            f"{report.get('late_dropped')}/{report.get('late_accepted')}"
        )
        # the verdict as stored in the application database, with this run's id
        row = PostgresHook(postgres_conn_id=WEIR_DB).get_first(
            "SELECT passed, report FROM audits WHERE id = %s AND run_id = %s",
            parameters=(report.get("id"), run_id),
        )
        if row is None:
            raise AirflowFailException(
                f"audit #{report.get('id')} of window {window} is not stored with run id {run_id}"
            )
        passed, stored = row
        print(f"audit #{report.get('id')} of window {window} (run {run_id}): {numbers}")
        if not passed:
            problems = stored.get("problems", []) if isinstance(stored, dict) else json.loads(stored).get("problems", [])
            for p in problems:
                print(f"  - {p}")
            raise AirflowFailException(
                f"audit of window {window} FAILED: {numbers}; problems: {'; '.join(problems)}"
            )
        return {"window_start": window, "passed": True, "audit_id": report.get("id")}

    wait_until_sealable >> seal() >> audit()
