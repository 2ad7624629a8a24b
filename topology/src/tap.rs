//! Live samples of the records on an edge of a running topology (`weir tap NODE[.OUTPUT]`,
//! like `vector tap`): the HTTP server opens a [`Tap`] on an edge; the pipelines offer every
//! record they route onto a tapped edge, and each tap takes at most its rate of them a
//! second, as JSON lines, dropping the rest (counted) rather than ever slowing the pipeline
//! or holding memory. With no tap open, an offer is one relaxed atomic load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

use crate::record::{Body, Envelope};

/// How many bytes of a record's value a sample shows (cut at a character boundary).
pub const PREVIEW_BYTES: usize = 2048;

/// The taps open on a process's pipelines; shared by every pipeline and the HTTP server.
#[derive(Default)]
pub struct Taps {
    any: AtomicBool,
    open: Mutex<Vec<Arc<Tap>>>,
}

/// One open tap: an edge, a rate and where its samples go.
pub struct Tap {
    node: String,
    /// `None`: the node's default output (or what a topic sink writes).
    output: Option<String>,
    per_second: u32,
    state: Mutex<Budget>,
    send: tokio::sync::mpsc::Sender<Value>,
    /// Records the rate or a slow reader left out.
    pub dropped: AtomicU64,
}

struct Budget {
    second: Instant,
    taken: u32,
}

impl Taps {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Opens a tap on `node`'s `output`, taking at most `per_second` records a second;
    /// samples arrive on the receiver until it is dropped.
    pub fn open(
        &self,
        node: &str,
        output: Option<&str>,
        per_second: u32,
    ) -> (Arc<Tap>, tokio::sync::mpsc::Receiver<Value>) {
        let (send, receive) = tokio::sync::mpsc::channel(per_second.max(1) as usize * 2);
        let tap = Arc::new(Tap {
            node: node.to_owned(),
            output: output.map(str::to_owned),
            per_second: per_second.max(1),
            state: Mutex::new(Budget {
                second: Instant::now(),
                taken: 0,
            }),
            send,
            dropped: AtomicU64::new(0),
        });
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.push(tap.clone());
        self.any.store(true, Ordering::Release);
        (tap, receive)
    }

    /// How many taps are open.
    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A record routed onto `node`'s `output`: a sample for each tap on that edge that has
    /// budget left this second. Taps whose reader went away are closed here.
    #[inline]
    pub fn offer(&self, node: &str, output: Option<&str>, envelope: &Envelope) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        self.offer_slow(node, output, envelope);
    }

    #[cold]
    fn offer_slow(&self, node: &str, output: Option<&str>, envelope: &Envelope) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|t| !t.send.is_closed());
        self.any.store(!open.is_empty(), Ordering::Release);
        let mut sample = None;
        for tap in open
            .iter()
            .filter(|t| t.node == node && t.output.as_deref() == output)
        {
            if !tap.take() {
                tap.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let s = sample.get_or_insert_with(|| describe(node, output, envelope));
            if tap.send.try_send(s.clone()).is_err() {
                tap.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Tap {
    /// One more record this second, if the rate allows.
    fn take(&self) -> bool {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if b.second.elapsed().as_secs() >= 1 {
            b.second = Instant::now();
            b.taken = 0;
        }
        if b.taken >= self.per_second {
            return false;
        }
        b.taken += 1;
        true
    }
}

/// A record on an edge as a tap shows it: where it came from, what it is, and its value
/// (a preview: the first [`PREVIEW_BYTES`], escaped as JSON text), or its reasons.
pub fn describe(node: &str, output: Option<&str>, e: &Envelope) -> Value {
    let o = &e.origin;
    let preview = |bytes: Option<&[u8]>| -> Value {
        let Some(b) = bytes else { return Value::Null };
        let text = String::from_utf8_lossy(b);
        let mut cut = text.len().min(PREVIEW_BYTES);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        json!(&text[..cut])
    };
    let (kind, extra) = match &e.body {
        Body::Raw => ("raw", json!({})),
        Body::Json(_) => ("json", json!({})),
        Body::Valid(_) => ("valid", json!({})),
        Body::Clean(_) => ("clean", json!({})),
        Body::Failed(f) => (
            "failed",
            json!({"reasons": f.reasons, "message": f.message, "failed_by": f.node}),
        ),
    };
    let value = match &e.body {
        Body::Clean(row) => preview(Some(&row.json)),
        _ => preview(e.value()),
    };
    let mut v = json!({
        "edge": match output {
            Some(out) => format!("{node}.{out}"),
            None => node.to_owned(),
        },
        "at": chrono_free_now(),
        "kind": kind,
        "source": {"topic": o.topic, "partition": o.partition, "offset": o.offset, "timestamp": o.timestamp},
        "key": preview(o.key.as_deref()),
        "value": value,
    });
    if let (Value::Object(m), Value::Object(x)) = (&mut v, extra) {
        m.extend(x);
    }
    v
}

/// Milliseconds since 1970, without a date library in the core.
fn chrono_free_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Failure, Origin};

    fn failed() -> Envelope {
        let mut e = Envelope::raw(Origin {
            topic: "raw".into(),
            partition: 1,
            offset: 7,
            value: Some(br#"{"email":"nope"}"#.to_vec()),
            ..Origin::default()
        });
        e.set_body(Body::Failed(Failure {
            reasons: vec!["email.invalid".into()],
            message: "email: not an email".into(),
            node: "validate".into(),
            headers: vec![],
        }));
        e
    }

    #[test]
    fn a_tap_sees_only_its_edge_at_most_its_rate_and_closes_with_its_reader() {
        let taps = Taps::new();
        let e = failed();
        // nothing open: nothing happens
        taps.offer("validate", Some("invalid"), &e);
        let (tap, mut rx) = taps.open("validate", Some("invalid"), 3);
        for _ in 0..10 {
            taps.offer("validate", Some("invalid"), &e);
            taps.offer("validate", None, &e);
        }
        let mut got = Vec::new();
        while let Ok(v) = rx.try_recv() {
            got.push(v);
        }
        assert_eq!(got.len(), 3);
        assert_eq!(tap.dropped.load(Ordering::Relaxed), 7);
        assert_eq!(got[0]["edge"], "validate.invalid");
        assert_eq!(got[0]["reasons"], json!(["email.invalid"]));
        assert_eq!(got[0]["source"]["offset"], 7);
        assert_eq!(got[0]["value"], r#"{"email":"nope"}"#);
        drop(rx);
        taps.offer("validate", Some("invalid"), &e);
        assert!(taps.is_empty(), "a tap whose reader left is closed");
    }

    #[test]
    fn a_preview_is_cut_at_a_character_boundary() {
        let e = Envelope::raw(Origin {
            value: Some("é".repeat(PREVIEW_BYTES).into_bytes()),
            ..Origin::default()
        });
        let v = describe("raw", None, &e);
        let s = v["value"].as_str().unwrap();
        assert!(s.len() <= PREVIEW_BYTES && s.chars().all(|c| c == 'é'));
    }
}
