//! The randomuser.me client against a real HTTP server on loopback serving the API's
//! documented responses: results kept byte for byte and keyed by `login.uuid`; the error
//! body, HTTP 500 and 429, a response slower than the timeout and garbage bytes each give a
//! named error.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::http::{serve, Reply};
use weir::ingest::randomuser::{Client, FetchError, RandomUserConfig};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/randomuser")
            .join(name),
    )
    .unwrap()
}

fn client(url: &str, timeout: Duration) -> Client {
    Client::new(RandomUserConfig {
        url: url.to_owned(),
        results: 7,
        nat: Some("us,ir,ua".into()),
        seed: Some("abc".into()),
        timeout,
    })
}

#[test]
fn results_are_fetched_whole_and_keyed_by_login_uuid() {
    let body = fixture("results-7-mixed-nat.json");
    let server = serve(vec![Reply::new(200, body.clone())]);
    let fetched = client(&server.url, Duration::from_secs(5)).fetch().unwrap();
    assert_eq!(
        server.requests.lock().unwrap()[0],
        "GET /api/?results=7&nat=us%2Cir%2Cua&seed=abc HTTP/1.1"
    );
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let expected = doc["results"].as_array().unwrap();
    assert_eq!(fetched.users.len(), 7);
    assert_eq!(fetched.seed.as_deref(), Some("b7c41a9e0d2f3356"));
    for (user, want) in fetched.users.iter().zip(expected) {
        assert_eq!(user.key.as_deref(), want["login"]["uuid"].as_str());
        // whole and unchanged: the bytes parse to the same object, and they are a slice
        // of the response as sent
        let got: serde_json::Value = serde_json::from_slice(&user.value).unwrap();
        assert_eq!(&got, want);
        assert!(body
            .windows(user.value.len())
            .any(|w| w == user.value.as_slice()));
    }
}

#[test]
fn the_single_result_fixture_parses() {
    let server = serve(vec![Reply::new(200, fixture("results-1.json"))]);
    let fetched = client(&server.url, Duration::from_secs(5)).fetch().unwrap();
    assert_eq!(fetched.users.len(), 1);
    assert_eq!(
        fetched.users[0].key.as_deref(),
        Some("7a0eed16-9430-4d68-901f-c0d4c1c3bf00")
    );
}

#[test]
fn the_api_error_body_is_an_api_error() {
    let body = fixture("error.json");
    let server = serve(vec![Reply::new(200, body.clone())]);
    let err = client(&server.url, Duration::from_secs(5))
        .fetch()
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::Api(m) if m.starts_with("Uh oh, something has gone wrong")),
        "{err}"
    );

    // the same body with a 503 still says what the API said
    let server = serve(vec![Reply::new(503, body)]);
    let err = client(&server.url, Duration::from_secs(5))
        .fetch()
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::Api(m) if m.ends_with("(HTTP 503)")),
        "{err}"
    );
}

#[test]
fn http_500_and_429_are_named() {
    let server = serve(vec![
        Reply::new(500, "Internal Server Error").header("Content-Type", "text/plain")
    ]);
    let err = client(&server.url, Duration::from_secs(5))
        .fetch()
        .unwrap_err();
    assert_eq!(
        err,
        FetchError::Status {
            status: 500,
            body: "Internal Server Error".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "the API answered HTTP 500: Internal Server Error"
    );

    let server = serve(vec![Reply::new(429, "slow down").header("Retry-After", "7")]);
    let err = client(&server.url, Duration::from_secs(5))
        .fetch()
        .unwrap_err();
    assert_eq!(
        err,
        FetchError::RateLimited {
            retry_after: Some(7)
        }
    );
    assert_eq!(
        err.to_string(),
        "rate limited by the API (HTTP 429); it asks to retry after 7 s"
    );
}

#[test]
fn a_slow_response_times_out() {
    let server = serve(vec![
        Reply::new(200, fixture("results-1.json")).delay(Duration::from_secs(3))
    ]);
    let started = Instant::now();
    let err = client(&server.url, Duration::from_millis(500))
        .fetch()
        .unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "gave up after the timeout, not the response"
    );
}

#[test]
fn garbage_and_empty_bodies_are_named() {
    let server = serve(vec![Reply::new(200, vec![0xff, 0x00, 0x13, b'<', b'h'])]);
    let err = client(&server.url, Duration::from_secs(5))
        .fetch()
        .unwrap_err();
    assert!(matches!(err, FetchError::NotJson { .. }), "{err}");

    let server = serve(vec![Reply::new(200, r#"{"results":[],"info":{}}"#)]);
    assert_eq!(
        client(&server.url, Duration::from_secs(5))
            .fetch()
            .unwrap_err(),
        FetchError::Empty
    );
}

#[test]
fn no_server_is_a_connection_error_and_an_unknown_host_a_dns_error() {
    // a port nothing listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = client(
        &format!("http://127.0.0.1:{port}/api/"),
        Duration::from_secs(5),
    )
    .fetch()
    .unwrap_err();
    assert!(matches!(err, FetchError::Connect { .. }), "{err}");

    let err = client(
        "http://weir-no-such-host.invalid/api/",
        Duration::from_secs(5),
    )
    .fetch()
    .unwrap_err();
    assert_eq!(
        err,
        FetchError::Dns {
            host: "weir-no-such-host.invalid".into()
        }
    );
}
