//! The live view against the real stack: the page is served by Weir with no external asset,
//! the websocket refuses a foreign Origin and a client over its cap, drops a silent one,
//! greets each clean record within seconds as plain
//! text (an HTML-looking name stays text), and the vital signs count the records.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

fn connect(
    port: u16,
    origin: Option<&str>,
) -> Result<tungstenite::WebSocket<TcpStream>, tungstenite::Error> {
    let mut req = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    tungstenite::client(req, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
        })
}

#[test]
fn greetings_reach_the_websocket_as_text_within_seconds() {
    let t = common::weir::Topics::create("weir-live", 2);
    let raw = t.raw.clone();
    let (mut child, port) = t.serve_fresh(
        "live",
        &[("WEIR_WS_MAX_CLIENTS", "1"), ("WEIR_WS_IDLE_TIMEOUT", "3s")],
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        if let Ok(mut r) = ureq::get(&format!("{base}/")).call() {
            break r.body_mut().read_to_string().unwrap();
        }
        assert!(Instant::now() < deadline, "the HTTP server never answered");
        assert!(child.try_wait().unwrap().is_none(), "weir run exited");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(page.contains("<title>Weir — live</title>"));
    // its style and script are its own files (its CSP allows nothing inline), from nowhere else
    for attr in ["src=\"", "href=\""] {
        for (at, _) in page.match_indices(attr) {
            let url = &page[at + attr.len()..];
            assert!(
                url.starts_with('/') && !url.starts_with("//"),
                "an asset from elsewhere: {}",
                &url[..url.len().min(60)]
            );
        }
    }
    for asset in ["/live.js", "/live.css"] {
        assert!(page.contains(asset), "{page}");
        assert!(!common::get_text(&format!("{base}{asset}")).is_empty());
    }
    assert!(!page.contains("innerHTML"), "record text is never HTML");

    // a foreign page may not open the websocket
    match connect(port, Some("http://evil.example")) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("a foreign origin was not refused: {:?}", other.map(|_| ())),
    }
    let mut ws = connect(port, Some(&base)).expect("the page's own origin is allowed");
    // one client at most here: the next is refused, clearly
    match connect(port, Some(&base)) {
        Err(tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 503);
            let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default());
            assert!(body.contains("WEIR_WS_MAX_CLIENTS"), "{body}");
        }
        other => panic!("a client over the cap was let in: {:?}", other.map(|_| ())),
    }
    let hello = ws.read().unwrap();
    assert!(
        hello.to_text().unwrap().contains("\"type\":\"hello\""),
        "{hello}"
    );
    // the websocket sink reads from the end of the topic: give it a moment to be assigned
    std::thread::sleep(Duration::from_secs(2));

    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .create()
        .unwrap();
    let names = ["ana", "<img src=x onerror=alert(1)>", "зоряна"];
    for (i, n) in names.iter().enumerate() {
        let v = serde_json::json!({"name": {"first": n, "last": "lee"}, "email": format!("live{i}@example.com"),
            "location": {"city": "c", "country": "d"}, "login": {"uuid": format!("00000000-0000-4000-8000-{i:012}")}});
        producer
            .send(
                rdkafka::producer::BaseRecord::<str, str>::to(&raw)
                    .key("k")
                    .payload(&v.to_string()),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    let sent = Instant::now();
    let mut greetings = Vec::new();
    while greetings.len() < names.len() && sent.elapsed() < Duration::from_secs(5) {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let m: serde_json::Value = serde_json::from_str(&t).unwrap();
                if m["type"] == "greeting" {
                    greetings.push(m["text"].as_str().unwrap().to_owned());
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("websocket: {e}"),
        }
    }
    assert!(
        greetings.len() == names.len(),
        "greetings within 5 s: {greetings:?}"
    );
    greetings.sort();
    assert_eq!(
        greetings,
        [
            "Hello <img Src=x Onerror=alert(1)> Lee!",
            "Hello Ana Lee!",
            "Hello Зоряна Lee!"
        ]
    );

    let v: serde_json::Value =
        serde_json::from_str(&common::get_text(&format!("{base}/api/vitals"))).unwrap();
    assert_eq!(v["records_in"], 3.0, "{v}");
    assert_eq!(v["clean"], 3.0, "{v}");
    assert_eq!(v["websocket_clients"], 1, "{v}");
    let metrics = common::get_text(&format!("{base}/metrics"));
    assert!(
        metrics.lines().any(|l| l == "weir_websocket_clients 1"),
        "{metrics}"
    );

    // a client that stops answering (never reads, so never pongs) is dropped after the idle
    // timeout (3 s here); one that reads stays
    ws.close(None).unwrap();
    let clients = || -> i64 {
        let v: serde_json::Value =
            serde_json::from_str(&common::get_text(&format!("{base}/api/vitals"))).unwrap();
        v["websocket_clients"].as_i64().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while clients() != 0 {
        assert!(
            Instant::now() < deadline,
            "the closed client was not let go"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let silent = connect(port, Some(&base)).expect("a client under the cap");
    let connected = Instant::now();
    assert_eq!(clients(), 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    while clients() != 0 {
        assert!(
            Instant::now() < deadline,
            "a silent client was kept past the idle timeout"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = connected.elapsed();
    assert!(
        after >= Duration::from_millis(2500),
        "dropped after {after:?}, before its idle timeout"
    );
    drop(silent);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
