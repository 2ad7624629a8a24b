//! `GET /api/tap?edge=NODE[.OUTPUT][&rate=N]`: a live sample of the records on one edge of
//! the running topology, as JSON lines streamed until the client goes away (what `weir tap`
//! reads). An admin call: a sample holds record values. At most `rate` records a second
//! (1 to 100, 10 by default); the rest are dropped, never queued, so a tap cannot slow the
//! pipeline.

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{authorize, ApiError, WebState};

#[derive(Deserialize)]
pub(crate) struct TapQuery {
    edge: String,
    rate: Option<u32>,
}

/// Every edge of the running topology: each node, and `node.output` for each named output.
pub fn edges(topology: &Value) -> Vec<String> {
    let mut edges = Vec::new();
    for node in topology["sub_topologies"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["nodes"].as_array().into_iter().flatten())
    {
        let Some(name) = node["name"].as_str() else {
            continue;
        };
        if name.ends_with("-source") {
            continue;
        }
        edges.push(name.to_owned());
        for out in node["outputs"].as_array().into_iter().flatten() {
            // "target (output)" for a named output
            if let Some((_, named)) = out.as_str().and_then(|o| o.rsplit_once(" (")) {
                edges.push(format!("{name}.{}", named.trim_end_matches(')')));
            }
        }
    }
    edges.sort();
    edges.dedup();
    edges
}

pub(crate) async fn tap(
    state: web::Data<WebState>,
    req: HttpRequest,
    q: web::Query<TapQuery>,
) -> HttpResponse {
    if let Err(e) = authorize(&req, &state) {
        return e.response();
    }
    let Some(taps) = state.taps.clone() else {
        return ApiError::new(
            404,
            "this process runs no processing loop (see --subtopologies): tap the process that does",
        )
        .response();
    };
    let topology = state
        .topology
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let known = edges(&topology);
    if !known.contains(&q.edge) {
        return ApiError::new(
            404,
            format!(
                "no edge \"{}\" in the running topology; edges: {}",
                q.edge,
                known.join(", ")
            ),
        )
        .response();
    }
    let rate = q.rate.unwrap_or(10).clamp(1, 100);
    let (node, output) = match q.edge.split_once('.') {
        Some((n, o)) => (n, Some(o)),
        None => (q.edge.as_str(), None),
    };
    let (tap, receive) = taps.open(node, output, rate);
    let opened = json!({"tap": q.edge, "rate_per_second": rate});
    let first = futures::stream::once(async move {
        Ok::<_, actix_web::Error>(Bytes::from(format!("{opened}\n")))
    });
    let samples = futures::stream::unfold((receive, tap), |(mut rx, tap)| async move {
        let v = rx.recv().await?;
        Some((Ok(Bytes::from(format!("{v}\n"))), (rx, tap)))
    });
    HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("Cache-Control", "no-store"))
        .streaming(futures::StreamExt::chain(first, samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_nodes_and_their_named_outputs() {
        let t = json!({"sub_topologies": [
            {"nodes": [
                {"name": "raw", "outputs": ["validate", "dead_letter (undecodable)"]},
                {"name": "validate", "outputs": ["clean", "dead_letter (invalid)"]},
                {"name": "clean_topic", "outputs": ["topic:x"]}
            ]},
            {"nodes": [{"name": "clean_topic-source", "outputs": ["users"]}, {"name": "users", "outputs": []}]}
        ]});
        assert_eq!(
            edges(&t),
            vec![
                "clean_topic",
                "raw",
                "raw.undecodable",
                "users",
                "validate",
                "validate.invalid"
            ]
        );
    }
}
