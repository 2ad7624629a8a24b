"""The DAG folder imports cleanly, and user_window_seal_audit is what issue #7 describes:
every 5 minutes over data intervals, one run at a time, catching up in order, and
wait -> seal -> audit against Weir's API with connections from the environment."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow.models import DagBag

    return DagBag(dag_folder=str(DAGS), include_examples=False)


def test_the_dag_folder_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "user_window_seal_audit" in dagbag.dags


def test_the_seed_dag_is_gone(dagbag):
    assert "user_data_kafka_to_postgres_etl" not in dagbag.dags


def test_schedule_every_five_minutes_over_data_intervals(dagbag):
    dag = dagbag.dags["user_window_seal_audit"]
    assert dag.max_active_runs == 1
    assert dag.catchup is True
    start = pendulum.datetime(2026, 11, 25, 10, 5, tz="UTC")
    # a run at 10:10 covers exactly [10:05, 10:10)
    interval = dag.timetable.infer_manual_data_interval(run_after=start + timedelta(minutes=5))
    assert (interval.start, interval.end) == (start, start + timedelta(minutes=5))
    # consecutive runs: 5 minutes apart, in order
    first = dag.timetable.next_dagrun_info(last_automated_data_interval=None, restriction=_restriction(dag))
    second = dag.timetable.next_dagrun_info(last_automated_data_interval=first.data_interval, restriction=_restriction(dag))
    assert first.data_interval.end - first.data_interval.start == timedelta(minutes=5)
    assert second.data_interval.start == first.data_interval.end


def _restriction(dag):
    from airflow.timetables.base import TimeRestriction

    return TimeRestriction(earliest=dag.start_date, latest=None, catchup=True)


def test_tasks_and_their_order(dagbag):
    dag = dagbag.dags["user_window_seal_audit"]
    assert [t.task_id for t in dag.topological_sort()] == ["wait_until_sealable", "seal", "audit"]
    assert dag.get_task("wait_until_sealable").downstream_task_ids == {"seal"}
    assert dag.get_task("seal").downstream_task_ids == {"audit"}
    assert dag.get_task("audit").downstream_task_ids == set()


def test_the_sensor_polls_the_window_api_with_a_timeout(dagbag):
    sensor = dagbag.dags["user_window_seal_audit"].get_task("wait_until_sealable")
    assert type(sensor).__name__ == "HttpSensor"
    assert sensor.http_conn_id == "weir_api"
    assert sensor.endpoint.startswith("api/windows/{{") and sensor.endpoint.endswith("/sealable")
    assert 0 < sensor.timeout <= 3600
    assert sensor.mode == "reschedule"


def test_no_secret_in_the_dag_source():
    source = (DAGS / "user_window_seal_audit.py").read_text()
    for secret in ("WEIR_ADMIN_TOKEN=", "Bearer ey", "password="):
        assert secret not in source
    assert 'get_connection(WEIR_API).password' in source
