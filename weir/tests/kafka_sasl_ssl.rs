//! Weir on a secured cluster: the users topology against `deploy/dev`'s SASL_SSL listener
//! only (SCRAM-SHA-512 over TLS; bootstrap, user, password and CA from the environment, read
//! by the topology's `[kafka]` section). Every sub-topology runs (processing, the PostgreSQL
//! sink, the websocket sink, the dead-letter panel), then `/readyz`, `dlq tail`, `dlq replay`
//! and `audit`; the plaintext listener is out of reach of every process. A wrong password
//! stops `run`, `dlq tail` and `audit` within seconds with exit code 77 and the broker's reason.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

const GOOD: usize = 24;
const BAD: usize = 6;
const TOKEN: &str = "sasl-admin-token-4321";

/// `users.toml` with its `[kafka]` section for the SASL_SSL listener.
fn sasl_topology() -> PathBuf {
    let users = std::fs::read_to_string(common::weir::users_toml()).unwrap();
    let section = "[kafka]\nbootstrap_servers = \"${WEIR_KAFKA_BOOTSTRAP:-127.0.0.1:9092}\"\n";
    assert!(
        users.contains(section),
        "users.toml's [kafka] section changed"
    );
    let secured = users.replace(
        section,
        r#"[kafka]
bootstrap_servers = "${WEIR_KAFKA_SASL_BOOTSTRAP}"
options = { "security.protocol" = "SASL_SSL", "sasl.mechanisms" = "SCRAM-SHA-512", "sasl.username" = "${WEIR_KAFKA_SASL_USERNAME}", "sasl.password" = "${WEIR_KAFKA_SASL_PASSWORD}", "ssl.ca.location" = "${WEIR_KAFKA_CA}" }
"#,
    );
    let path = common::scratch_dir("sasl").join("users-sasl.toml");
    std::fs::write(&path, secured).unwrap();
    path
}

/// A client of the test's own on the SASL_SSL listener.
fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set(
        "bootstrap.servers",
        common::env("WEIR_KAFKA_SASL_BOOTSTRAP"),
    )
    .set("security.protocol", "SASL_SSL")
    .set("sasl.mechanisms", "SCRAM-SHA-512")
    .set("sasl.username", common::env("WEIR_KAFKA_SASL_USERNAME"))
    .set("sasl.password", common::env("WEIR_KAFKA_SASL_PASSWORD"))
    .set("ssl.ca.location", common::env("WEIR_KAFKA_CA"));
    c
}

/// `weir ARGS` on the test's topics, with the plaintext listener closed to it (a port where
/// nothing listens): whatever it reaches, it reaches through the topology's SASL_SSL settings.
fn weir(t: &common::weir::Topics, args: &[&str]) -> Command {
    let mut c = t.command(args);
    c.env("WEIR_KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .env("WEIR_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::null());
    c
}

#[test]
fn the_users_topology_runs_on_a_sasl_ssl_listener_and_a_wrong_password_fails_fast() {
    let topology = sasl_topology();
    let topo = topology.to_str().unwrap();
    let t = common::weir::Topics::named("weir-sasl", 2);
    let admin: AdminClient<DefaultClientContext> = client().create().unwrap();
    let topics: Vec<NewTopic> = [&t.raw, &t.clean, &t.dlq]
        .iter()
        .map(|n| NewTopic::new(n, 2, TopicReplication::Fixed(1)))
        .collect();
    for r in futures::executor::block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .expect("creating topics over SASL_SSL")
    {
        r.unwrap();
    }

    let url = common::pg::fresh_database_now("weir_sasl");
    let port = common::free_port();
    let mut run = common::Guard(
        weir(&t, &["run", topo, "--instance", "sasl"])
            .env("WEIR_DATABASE_URL", &url)
            .env("WEIR_HTTP_PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = common::api::Http::local(port);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(run.try_wait().unwrap().is_none(), "weir run exited");
        if ureq::get(&format!("{}/healthz", http.base)).call().is_ok() {
            let (status, body) = http.call("GET", "/readyz", None);
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "never ready: {body}");
        }
        assert!(Instant::now() < deadline, "the HTTP server never answered");
        std::thread::sleep(Duration::from_millis(300));
    }
    // the websocket sink reads the clean topic from its end: a client, then the records
    let mut ws = tungstenite::client(
        format!("ws://127.0.0.1:{port}/ws"),
        TcpStream::connect(("127.0.0.1", port)).unwrap(),
    )
    .map(|(ws, _)| ws)
    .map_err(|e| format!("{e:?}"))
    .expect("the live page's websocket");
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let producer: BaseProducer = client().create().unwrap();
    for i in 0..GOOD + BAD {
        let value = if i < GOOD {
            common::users::valid_user(i)
        } else {
            let mut v: serde_json::Value =
                serde_json::from_str(&common::users::valid_user(i)).unwrap();
            v["email"] = "not-an-email".into();
            v.to_string()
        };
        producer
            .send(
                BaseRecord::<str, str>::to(&t.raw)
                    .key(&format!("k{i}"))
                    .payload(&value),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    // the PostgreSQL sink writes every clean record; the websocket greets them
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(common::pg::connect(&url));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: i64 = rt
            .block_on(db.query_one("SELECT count(*) FROM users", &[]))
            .unwrap()
            .get(0);
        if rows == GOOD as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "{rows} of {GOOD} rows written");
        assert!(run.try_wait().unwrap().is_none(), "weir run exited");
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut greetings = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while greetings == 0 && Instant::now() < deadline {
        if let Ok(tungstenite::Message::Text(m)) = ws.read() {
            greetings += usize::from(m.contains("\"greeting\""));
        }
    }
    assert!(greetings > 0, "no greeting through the websocket sink");
    let (status, dlq) = http.call("GET", "/api/dlq/stats", None);
    assert_eq!(status, 200, "{dlq}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.call("GET", "/api/dlq/stats", None).1["by_reason"]["email.invalid"] != BAD {
        assert!(
            Instant::now() < deadline,
            "the dead-letter panel never counted them"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(http.call("GET", "/readyz", None).0, 200);

    // the dead-letter tools and the audit, on the same settings
    let out = weir(
        &t,
        &[
            "dlq",
            "tail",
            "--topology",
            topo,
            "--json",
            "--limit",
            "100",
        ],
    )
    .output()
    .unwrap();
    let tail = common::stdout_of(out);
    assert_eq!(tail.lines().count(), BAD, "{tail}");
    assert!(tail.lines().all(|l| l.contains("email.invalid")), "{tail}");
    let out = weir(
        &t,
        &[
            "dlq",
            "replay",
            "--topology",
            topo,
            "--reason",
            "email.invalid",
        ],
    )
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains(&format!("replayed {BAD} dead letters")),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let window = rt
        .block_on(db.query_one(
            "SELECT to_char(min(window_start) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM windows",
            &[],
        ))
        .unwrap()
        .get::<_, String>(0);
    let out = weir(&t, &["audit", topo, "--window", &window])
        .env("WEIR_DATABASE_URL", &url)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0 | 1))
            && (report.contains("PASSED") || report.contains("FAILED")),
        "the audit did not run: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(run);

    // a wrong password: a clear error and exit code 77 within seconds, from every command
    for args in [
        vec!["run", topo, "--instance", "sasl-wrong", "--no-http"],
        vec!["dlq", "tail", "--topology", topo],
        vec!["audit", topo, "--window", &window],
    ] {
        let started = Instant::now();
        let out = weir(&t, &args)
            .env("WEIR_KAFKA_SASL_PASSWORD", "not-the-password")
            .env("WEIR_DATABASE_URL", &url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(77), "{args:?}: {stderr}");
        assert!(stderr.contains("refused"), "{args:?}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{args:?} took {:?}",
            started.elapsed()
        );
        assert!(
            !stderr.contains("not-the-password"),
            "the password is printed: {stderr}"
        );
    }
}
