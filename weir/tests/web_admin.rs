//! The HTTP server of `weir run`, against the real stack: health and readiness, Prometheus
//! metrics, the topology, and every admin endpoint with and without the bearer token —
//! 401 without it, 409 for a window not sealable yet, 400 for a bad start, 404 for an
//! unknown window, and a forced seal and an audit that pass; dead letters' content behind
//! the token (counts public); 421 for a foreign `Host`; a strict CSP on every response.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::api::Http;

const TOKEN: &str = "test-admin-token-1234";

#[test]
fn admin_endpoints_need_the_token_and_answer_with_clear_statuses() {
    let t = common::weir::Topics::create("weir-web", 2);
    let raw = t.raw.clone();
    let url = common::pg::fresh_database_now("weir_web");
    let port = common::free_port();
    let mut child = t.serve("web", &url, port, &[("WEIR_ADMIN_TOKEN", TOKEN)]);
    let http = Http::local(port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{}/healthz", http.base)).call().is_err() {
        assert!(Instant::now() < deadline, "the HTTP server never answered");
        assert!(child.try_wait().unwrap().is_none(), "weir run exited");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        http.call("GET", "/healthz", None),
        (200, serde_json::json!({"status": "up"}))
    );
    // ready once the sink is up
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http.call("GET", "/readyz", None);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // records through the pipeline, so the counters exist
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .create()
        .unwrap();
    for i in 0..20 {
        let v = format!(
            r#"{{"name":{{"first":"a{i}","last":"b"}},"email":"w{i}@example.com","location":{{"city":"c","country":"d"}},"login":{{"uuid":"00000000-0000-4000-8000-{i:012}"}}}}"#
        );
        producer
            .send(
                rdkafka::producer::BaseRecord::<str, str>::to(&raw)
                    .key("k")
                    .payload(&v),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer
        .send(
            rdkafka::producer::BaseRecord::<str, str>::to(&raw)
                .key("k")
                .payload("{oops"),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (status, text) = http.text("/metrics");
        assert_eq!(status, 200);
        if text.contains("weir_dead_letters_total{reason=\"json.malformed\"} 1")
            && text.contains("weir_records_in_total{node=\"clean\"} 20")
            && text.contains("weir_transactions_total{result=\"committed\"}")
            && text.contains("weir_sink_rows_written_total{sink=\"users\"} 20")
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics did not count the records:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    for name in [
        "weir_transactions_total{result=\"committed\"}",
        "weir_commit_latency_seconds_bucket",
        "weir_sink_degraded{sink=\"users\"} 0",
    ] {
        assert!(metrics.contains(name), "no {name} in:\n{metrics}");
    }

    let (status, topo) = http.call("GET", "/api/topology", None);
    assert_eq!(status, 200);
    assert_eq!(topo["sub_topologies"].as_array().unwrap().len(), 3);

    // a window in the future: not sealable yet
    let start = (chrono::Utc::now().timestamp_millis() / 300_000 + 1) * 300_000;
    let start = chrono::DateTime::from_timestamp_millis(start)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let seal = format!("/api/windows/{start}/seal");
    let audit = format!("/api/windows/{start}/audit");
    for (method, path) in [
        ("POST", seal.as_str()),
        ("POST", audit.as_str()),
        ("GET", audit.as_str()),
    ] {
        let (status, body) = http.call(method, path, None);
        assert_eq!(status, 401, "{method} {path} without a token: {body}");
        assert_eq!(
            body["error"],
            "missing bearer token: send Authorization: Bearer <token>"
        );
        let (status, body) = http.call(method, path, Some("wrong"));
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("wrong bearer token")),
            "{method} {path}"
        );
    }
    let sealable = format!("/api/windows/{start}/sealable");
    let (status, body) = http.call("GET", &sealable, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["sealable"], &body["window"]),
        (&serde_json::json!(false), &serde_json::Value::Null),
        "{body}"
    );
    assert!(
        body["sealable_at"].is_string() && body.get("watermark").is_some(),
        "{body}"
    );
    let (status, body) = http.call("GET", "/api/windows/2026-11-25T10:01:00Z/sealable", None);
    assert_eq!(status, 400, "not a window start: {body}");
    let (status, body) = http.call("POST", &seal, Some(TOKEN));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("is not sealable yet"),
        "{body}"
    );
    let (status, body) = http.call("POST", "/api/windows/not-a-time/seal", Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    let (status, body) = http.call("GET", &format!("/api/windows/{start}"), None);
    assert_eq!(status, 404, "{body}");
    let (status, body) = http.call("GET", &audit, Some(TOKEN));
    assert_eq!(status, 404, "no audit yet: {body}");

    // forced, it seals, idempotently; then it audits clean
    let (status, body) = http.call("POST", &format!("{seal}?force=true&by=test"), Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["window"]["status"], "sealed");
    assert_eq!(body["window"]["sealed_by"], "test");
    let (status, again) = http.call("POST", &seal, Some(TOKEN));
    assert_eq!(
        (status, again["already_sealed"].as_bool()),
        (200, Some(true))
    );
    assert_eq!(again["window"], body["window"]);
    let (status, report) = http.call("POST", &format!("{audit}?run_id=web-test"), Some(TOKEN));
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["run_id"], "web-test");
    let (status, last) = http.call("GET", &audit, Some(TOKEN));
    assert_eq!(
        (status, &last["run_id"]),
        (200, &serde_json::json!("web-test"))
    );
    let (status, body) = http.call("GET", &sealable, None);
    assert_eq!(
        (status, &body["sealable"], &body["sealed"]),
        (200, &serde_json::json!(true), &serde_json::json!(true)),
        "{body}"
    );
    let metrics = common::get_text(&format!("http://127.0.0.1:{port}/metrics"));
    assert!(
        metrics.contains("weir_sink_windows_sealed_total{sink=\"users\"} 1"),
        "one seal counted, not the repeat:\n{metrics}"
    );
    // the audit counted by result (both results are there from the start)
    for line in [
        "weir_sink_audits_total{result=\"passed\",sink=\"users\"} 1",
        "weir_sink_audits_total{result=\"failed\",sink=\"users\"} 0",
        "weir_sink_unsealed_window_age_seconds{sink=\"users\"} 0",
    ] {
        assert!(metrics.contains(line), "no {line} in:\n{metrics}");
    }
    // a window left open two hours after its end: its age is what /metrics reads now
    let old_start = chrono::Utc::now() - chrono::Duration::hours(2) - chrono::Duration::minutes(5);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            common::pg::connect(&url)
                .await
                .execute(
                    "INSERT INTO windows (sink, window_start, window_end) VALUES ($1, $2, $3)",
                    &[
                        &format!("{}/users", t.app),
                        &old_start,
                        &(old_start + chrono::Duration::minutes(5)),
                    ],
                )
                .await
                .unwrap();
        });
    // (read from PostgreSQL at most every 5 s, however often /metrics is called)
    let deadline = Instant::now() + Duration::from_secs(15);
    let (metrics, age) = loop {
        let metrics = common::get_text(&format!("http://127.0.0.1:{port}/metrics"));
        let age: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("weir_sink_unsealed_window_age_seconds{sink=\"users\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no unsealed window age in:\n{metrics}"));
        if age > 0.0 || Instant::now() > deadline {
            break (metrics, age);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!((7190.0..7320.0).contains(&age), "{age}");
    // every metric the Grafana dashboard queries is one Weir serves
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/weir.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queried.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");
    // and every metric an alert rule reads
    let alerts = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml"),
    )
    .unwrap();
    for line in alerts.lines().filter(|l| !l.trim_start().starts_with('#')) {
        queried.extend(metric_names(line));
    }
    let served: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = queried
        .iter()
        .filter(|m| !served.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics Weir does not serve: {missing:?}"
    );
    // dead letters: counts are public, their values and keys need the token
    let (status, stats) = http.call("GET", "/api/dlq/stats", None);
    assert_eq!(status, 200, "{stats}");
    assert!(
        stats["by_reason"]["json.malformed"].as_u64() >= Some(1),
        "{stats}"
    );
    assert!(stats.get("recent").is_none(), "no record content: {stats}");
    for token in [None, Some("wrong")] {
        let (status, body) = http.call("GET", "/api/dlq", token);
        assert_eq!(status, 401, "{body}");
        assert!(!body.to_string().contains("oops"), "{body}");
    }
    let (status, dlq) = http.call("GET", "/api/dlq", Some(TOKEN));
    assert_eq!(status, 200, "{dlq}");
    assert!(
        dlq["by_reason"]["json.malformed"].as_u64() >= Some(1),
        "{dlq}"
    );
    assert!(dlq["recent"][0]["preview"].is_string(), "{dlq}");
    // another host name that resolves here (DNS rebinding) is refused; ours are served
    assert_eq!(raw_status(port, "evil.example:80", "/api/dlq/stats"), 421);
    assert_eq!(raw_status(port, "localhost.evil.example", "/healthz"), 421);
    assert_eq!(
        raw_status(port, &format!("localhost:{port}"), "/healthz"),
        200
    );
    // every response: a CSP without inline script or style, no framing, no sniffing
    for path in ["/", "/live.js", "/healthz", "/api/dlq"] {
        let r = http
            .agent
            .get(&format!("{}{path}", http.base))
            .call()
            .unwrap();
        let h = |name: &str| {
            r.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_else(|| panic!("{path}: no {name} header"))
        };
        let csp = h("content-security-policy");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
    }
    let (_, page) = http.text("/");
    assert!(
        !page.contains("<script>") && !page.contains("<style>") && !page.contains("style="),
        "the page has inline script or style:\n{page}"
    );
    let (status, list) = http.call("GET", "/api/windows", None);
    assert_eq!(status, 200);
    assert!(list["windows"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["status"] == "sealed"));

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Every PostgreSQL sink is started the same way and gets the admin API: a topology with two
/// (the users sink and a copy into the same table) answers `?sink=` for each, and names the
/// sinks when asked for one it does not have.
#[test]
fn every_postgres_sink_gets_the_admin_api() {
    let users = std::fs::read_to_string(common::weir::users_toml()).unwrap();
    let copy = "\n[sinks.users_copy]\ntype = \"postgres\"\ninputs = [\"clean_topic\"]\ntable = \"users\"\nkey = \"email\"\nwindow = \"5m\"\ngrace = \"30s\"\n";
    let i = users
        .find("[sinks.live]")
        .expect("users.toml has a live sink");
    let topology = common::scratch_dir("two-sinks").join("users-two-sinks.toml");
    std::fs::write(&topology, format!("{}{copy}\n{}", &users[..i], &users[i..])).unwrap();
    let t = common::weir::Topics::create("weir-two-sinks", 2);
    let url = common::pg::fresh_database_now("weir_two_sinks");
    let port = common::free_port();
    let mut child = common::Guard(
        t.command(&["run", topology.to_str().unwrap(), "--instance", "two"])
            .env("WEIR_DATABASE_URL", &url)
            .env("WEIR_HTTP_PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .create()
        .unwrap();
    for i in 0..5 {
        producer
            .send(
                rdkafka::producer::BaseRecord::<str, str>::to(&t.raw)
                    .key("k")
                    .payload(&common::users::valid_user(i)),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    let http = Http::local(port);
    let deadline = Instant::now() + Duration::from_secs(60);
    for sink in ["users", "users_copy"] {
        loop {
            assert!(child.try_wait().unwrap().is_none(), "weir run exited");
            if let Ok(mut r) = http
                .agent
                .get(&format!("{}/api/windows?sink={sink}", http.base))
                .call()
            {
                let body: serde_json::Value =
                    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                let rows: i64 = body["windows"]
                    .as_array()
                    .map(|w| {
                        w.iter()
                            .map(|w| w["rows_written"].as_i64().unwrap_or(0))
                            .sum()
                    })
                    .unwrap_or(0);
                if rows == 5 {
                    assert!(
                        body["sink"]
                            .as_str()
                            .unwrap()
                            .ends_with(&format!("/{sink}")),
                        "{body}"
                    );
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sink {sink} never showed its 5 rows"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let (status, body) = http.call("GET", "/api/windows?sink=nope", None);
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("users, users_copy"),
        "{body}"
    );
    let (status, body) = http.call("GET", "/readyz", None);
    assert_eq!(status, 200, "{body}");
}

/// The status of a GET that names `host` in its `Host` header (written by hand: an HTTP
/// client sets `Host` from the URL).
fn raw_status(port: u16, host: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"))
}

/// The names of Weir's metrics a PromQL expression (or any text) reads.
fn metric_names(text: &str) -> Vec<String> {
    text.match_indices("weir_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}
