//! The live page in a real browser (Debian's chromium, headless, driven by playwright-core
//! from `web/tests/live.browser.mjs`) while records flow through Kafka: greetings within 5 s,
//! an HTML name shown as text, vital signs and the dead-letter panel moving, a screenshot under
//! the test's output folder. Then `/metrics` of the same process passes
//! `promtool check metrics`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::weir::Topics;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const XSS_NAME: &str = "<img src=x onerror=alert(1)>";
/// What the clean processor makes of it (title case), as the page must show it: text.
const XSS_GREETING: &str = "Hello <img Src=x Onerror=alert(1)> Lee!";

/// The admin token the page is given to show the dead letters' values.
const ADMIN_TOKEN: &str = "browser-admin-token-5678";

fn record(i: usize, first: &str, valid: bool) -> String {
    let email = if valid {
        format!("browser{i}@example.com")
    } else {
        "not-an-email".into()
    };
    serde_json::json!({"name": {"first": first, "last": "lee"}, "email": email,
        "location": {"city": "Porto", "country": "Portugal"},
        "login": {"uuid": format!("00000000-0000-4000-8000-{i:012}")}})
    .to_string()
}

/// Produces a few records per second (one in four invalid) until `stop`.
fn produce_until(topic: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", common::bootstrap())
            .set("linger.ms", "0")
            .create()
            .unwrap();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) && i < 2_000 {
            let first = match i {
                1 => XSS_NAME.to_owned(),
                _ => format!("name{i}"),
            };
            let value = record(i, &first, i % 4 != 3);
            producer
                .send(BaseRecord::<str, str>::to(&topic).key("k").payload(&value))
                .map_err(|(e, _)| e)
                .unwrap();
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        i
    })
}

#[test]
fn the_live_page_in_chromium_and_metrics_that_promtool_accepts() {
    let chromium = std::env::var("WEIR_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: deploy/dev test installs Debian's chromium"
    );
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
    assert!(
        web.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: deploy/dev test runs npm ci in web/"
    );
    let t = Topics::create("weir-browser", 2);
    let (mut weir, port) = t.serve_fresh("browser", &[("WEIR_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let base = format!("http://127.0.0.1:{port}");
    // the websocket sink reads from the end of the clean topic: let it be assigned
    std::thread::sleep(Duration::from_secs(2));

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&out_dir).unwrap();
    let screenshot = out_dir.join("live.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut node = common::Guard(
        Command::new("node")
            .arg(web.join("tests/live.browser.mjs"))
            .env("WEIR_URL", format!("{base}/"))
            .env("WEIR_SCREENSHOT", &screenshot)
            .env("WEIR_XSS_GREETING", XSS_GREETING)
            .env("WEIR_CHROMIUM", &chromium)
            .env("WEIR_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node (Node.js 20) runs the browser script"),
    );
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut log = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push(line.clone());
        if line == "READY" {
            break;
        }
    }
    assert_eq!(
        log.last().map(String::as_str),
        Some("READY"),
        "the page never went live: {log:?}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce_until(t.raw.clone(), stop.clone());
    log.extend(lines.map_while(Result::ok));
    let status = node.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let produced = producer.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut node.stderr.take().unwrap(), &mut stderr).unwrap();
    eprintln!(
        "{}\n{stderr}\n({produced} records produced)",
        log.join("\n")
    );
    assert!(status.success(), "the browser test failed:\n{stderr}");
    assert_eq!(log.last().map(String::as_str), Some("PASS"));
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        screenshot.display()
    );
    eprintln!("screenshot: {}", screenshot.display());

    // the same process's metrics, with every family in use, pass promtool's checks
    let metrics = common::get_text(&format!("{base}/metrics"));
    for family in [
        "weir_records_in_total",
        "weir_dead_letters_total",
        "weir_consumer_lag_records",
        "weir_websocket_clients",
        "weir_sink_rows_written_total",
    ] {
        assert!(
            metrics.contains(&format!("\n# TYPE {family} ")),
            "{family} missing from /metrics"
        );
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; deploy/dev test installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let _ = Command::new("kill")
        .args(["-TERM", &weir.id().to_string()])
        .status();
    assert!(weir.wait().unwrap().success());
}
