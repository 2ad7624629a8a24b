//! The randomuser.me client: one GET per poll, results kept byte for byte.
//!
//! Every way a poll can fail is named ([`FetchError`]) so the loop can log it clearly,
//! back off with jitter, and try again; nothing already fetched is lost and nothing
//! crashes the loop.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Where and how to poll.
#[derive(Debug, Clone)]
pub struct RandomUserConfig {
    /// The API endpoint, `https://randomuser.me/api/` by default.
    pub url: String,
    /// Users per request, 1 to 5000.
    pub results: u32,
    /// Nationalities, e.g. `us,fr,ua`.
    pub nat: Option<String>,
    /// The API's seed: the same seed returns the same users.
    pub seed: Option<String>,
    /// Bound on one whole request (connect, headers and body).
    pub timeout: Duration,
}

impl Default for RandomUserConfig {
    fn default() -> Self {
        Self {
            url: "https://randomuser.me/api/".into(),
            results: 1,
            nat: None,
            seed: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// One user as fetched: the `results[]` object's exact bytes and its `login.uuid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedUser {
    pub key: Option<String>,
    pub value: Vec<u8>,
}

/// A poll's users and what the API said about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub users: Vec<FetchedUser>,
    /// `info.seed` of the response, when present.
    pub seed: Option<String>,
}

/// Why a poll failed. Each variant carries what a person needs to understand it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("DNS lookup failed for {host}: no network, or the name does not resolve")]
    Dns { host: String },
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("no answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("rate limited by the API (HTTP 429){}", retry_after.map(|s| format!("; it asks to retry after {s} s")).unwrap_or_default())]
    RateLimited { retry_after: Option<u64> },
    #[error("the API answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the API's answer is not JSON ({detail}): {body}")]
    NotJson { detail: String, body: String },
    #[error("the API reported an error: {0}")]
    Api(String),
    #[error("the API answered with no results")]
    Empty,
    #[error("reading the answer failed: {0}")]
    Read(String),
}

impl FetchError {
    /// Whether trying again later may help (all but a malformed request do).
    pub fn is_transient(&self) -> bool {
        true
    }
}

/// A short, printable prefix of a body for messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(120)]);
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.len() > 120 {
        format!("{clean}…")
    } else {
        clean
    }
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow, default)]
    results: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    info: Option<Info>,
}

#[derive(Deserialize)]
struct Info {
    #[serde(default)]
    seed: Option<String>,
}

#[derive(Deserialize)]
struct KeyOnly {
    #[serde(default)]
    login: Option<Login>,
}

#[derive(Deserialize)]
struct Login {
    #[serde(default)]
    uuid: Option<String>,
}

/// Splits a response body into users, each kept byte for byte.
pub fn parse_body(body: &[u8]) -> Result<Fetched, FetchError> {
    let response: Response = serde_json::from_slice(body).map_err(|e| FetchError::NotJson {
        detail: e.to_string(),
        body: snippet(body),
    })?;
    if let Some(error) = response.error {
        return Err(FetchError::Api(error));
    }
    let results = response.results.unwrap_or_default();
    if results.is_empty() {
        return Err(FetchError::Empty);
    }
    let users = results
        .into_iter()
        .map(|raw| {
            let key = serde_json::from_str::<KeyOnly>(raw.get())
                .ok()
                .and_then(|k| k.login?.uuid);
            FetchedUser {
                key,
                value: raw.get().as_bytes().to_vec(),
            }
        })
        .collect();
    Ok(Fetched {
        users,
        seed: response.info.and_then(|i| i.seed),
    })
}

/// A reusable HTTP client for the API.
pub struct Client {
    agent: ureq::Agent,
    config: RandomUserConfig,
}

impl Client {
    pub fn new(config: RandomUserConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { agent, config }
    }

    pub fn config(&self) -> &RandomUserConfig {
        &self.config
    }

    fn host(&self) -> String {
        self.config
            .url
            .split("://")
            .nth(1)
            .and_then(|r| r.split(['/', ':']).next())
            .unwrap_or(&self.config.url)
            .to_owned()
    }

    /// One poll: GET `url?results=N[&nat=..][&seed=..]`.
    pub fn fetch(&self) -> Result<Fetched, FetchError> {
        let c = &self.config;
        let mut request = self
            .agent
            .get(&c.url)
            .query("results", c.results.to_string());
        if let Some(nat) = &c.nat {
            request = request.query("nat", nat);
        }
        if let Some(seed) = &c.seed {
            request = request.query("seed", seed);
        }
        let mut response = request.call().map_err(|e| self.classify(e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .map_err(|e| self.classify(e))?;
        match status {
            200..=299 => parse_body(&body),
            429 => Err(FetchError::RateLimited { retry_after }),
            _ => {
                // the API's {"error": ...} body says more than the status
                if let Ok(Response { error: Some(e), .. }) = serde_json::from_slice(&body) {
                    return Err(FetchError::Api(format!("{e} (HTTP {status})")));
                }
                Err(FetchError::Status {
                    status,
                    body: snippet(&body),
                })
            }
        }
    }

    fn classify(&self, e: ureq::Error) -> FetchError {
        let url = self.config.url.clone();
        match e {
            ureq::Error::HostNotFound => FetchError::Dns { host: self.host() },
            ureq::Error::Timeout(_) => FetchError::Timeout {
                url,
                timeout: self.config.timeout,
            },
            ureq::Error::ConnectionFailed => FetchError::Connect {
                url,
                detail: "connection failed".into(),
            },
            // the resolver's failure arrives as an I/O error with getaddrinfo's message
            ureq::Error::Io(io) if io.to_string().contains("lookup address") => {
                FetchError::Dns { host: self.host() }
            }
            ureq::Error::Io(io) => match io.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    FetchError::Timeout {
                        url,
                        timeout: self.config.timeout,
                    }
                }
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::NetworkUnreachable
                | std::io::ErrorKind::HostUnreachable => FetchError::Connect {
                    url,
                    detail: io.to_string(),
                },
                _ => FetchError::Read(io.to_string()),
            },
            other => FetchError::Read(other.to_string()),
        }
    }
}

/// Exponential backoff with full jitter: a random wait in [base, min(cap, base·2^attempt)].
pub fn backoff(attempt: u32, base: Duration, cap: Duration, random: u64) -> Duration {
    let max = base
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(cap);
    let span = max.saturating_sub(base).as_millis() as u64;
    base + Duration::from_millis(if span == 0 { 0 } else { random % (span + 1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_kept_byte_for_byte() {
        let body = br#"{"results":[{"login":{"uuid":"u-1"},"name":{"first":"A"} , "x": 1.50},{"name":{}}],"info":{"seed":"abc"}}"#;
        let f = parse_body(body).unwrap();
        assert_eq!(f.seed.as_deref(), Some("abc"));
        assert_eq!(f.users[0].key.as_deref(), Some("u-1"));
        assert_eq!(
            f.users[0].value,
            br#"{"login":{"uuid":"u-1"},"name":{"first":"A"} , "x": 1.50}"#
        );
        assert_eq!(f.users[1].key, None);
    }

    #[test]
    fn bad_bodies_are_named() {
        assert_eq!(parse_body(br#"{"results":[]}"#), Err(FetchError::Empty));
        assert_eq!(
            parse_body(br#"{"error":"Uh oh"}"#),
            Err(FetchError::Api("Uh oh".into()))
        );
        assert!(matches!(
            parse_body(b"<html>busy</html>"),
            Err(FetchError::NotJson { .. })
        ));
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(30);
        assert_eq!(backoff(0, base, cap, 12345), base);
        for attempt in 1..10 {
            for r in [0, 1, 999_999, u64::MAX] {
                let d = backoff(attempt, base, cap, r);
                assert!(d >= base && d <= cap, "{attempt} {r} {d:?}");
            }
        }
        assert!(backoff(3, base, cap, u64::MAX - 7) <= Duration::from_secs(8));
    }
}
