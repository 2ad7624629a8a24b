//! Sealing a window: it waits for the watermark (the minimum over the sink's partitions, as
//! stored by the running sinks) to pass the window's end plus the grace period — or is
//! forced — and marks the window sealed with its final counts, atomically and idempotently.
//! Also the windows' listing behind `GET /api/windows`.

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use super::super::window::{window_start, Millis};

/// The window settings of a sink.
#[derive(Debug, Clone)]
pub struct WindowSpec {
    /// The sink's id in the tables (`application/node`).
    pub sink_id: String,
    pub window_ms: i64,
    pub grace_ms: i64,
}

/// A window as the `windows` table holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowInfo {
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub status: String,
    pub records: i64,
    pub rows_written: i64,
    pub table_rows: Option<i64>,
    pub rejected: i64,
    pub late_dead_letter: i64,
    pub late_dropped: i64,
    pub late_accepted: i64,
    pub first_record_at: Option<DateTime<Utc>>,
    pub last_record_at: Option<DateTime<Utc>>,
    pub sealed_at: Option<DateTime<Utc>>,
    pub sealed_by: Option<String>,
}

const WINDOW_COLUMNS: &str = "window_start, window_end, status, records, rows_written, table_rows, rejected, \
    late_dead_letter, late_dropped, late_accepted, first_record_at, last_record_at, sealed_at, sealed_by";

fn window_of(r: &tokio_postgres::Row) -> WindowInfo {
    WindowInfo {
        window_start: r.get(0),
        window_end: r.get(1),
        status: r.get(2),
        records: r.get(3),
        rows_written: r.get(4),
        table_rows: r.get(5),
        rejected: r.get(6),
        late_dead_letter: r.get(7),
        late_dropped: r.get(8),
        late_accepted: r.get(9),
        first_record_at: r.get(10),
        last_record_at: r.get(11),
        sealed_at: r.get(12),
        sealed_by: r.get(13),
    }
}

/// What sealing did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SealOutcome {
    pub window: WindowInfo,
    /// True when the window was sealed before this call (the result is the stored one).
    pub already_sealed: bool,
    pub watermark: Option<DateTime<Utc>>,
    pub forced: bool,
}

/// Whether a window can be sealed now (what Airflow's sensor polls).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sealability {
    pub sink: String,
    pub window_start: DateTime<Utc>,
    /// Sealed already, or the watermark has passed `sealable_at`.
    pub sealable: bool,
    pub sealed: bool,
    pub watermark: Option<DateTime<Utc>>,
    /// The window's end plus grace.
    pub sealable_at: DateTime<Utc>,
    /// `None` while no record of the window has arrived.
    pub window: Option<WindowInfo>,
}

/// Whether the window starting at `start` can be sealed now; also for a window with no rows.
pub async fn sealable(
    client: &Client,
    spec: &WindowSpec,
    start: DateTime<Utc>,
) -> Result<Sealability, SealError> {
    let needed = seal_needs(spec, start)?;
    let window = window(client, spec, start).await?;
    let wm = watermark(client, spec).await?;
    let sealed = window.as_ref().is_some_and(|w| w.status == "sealed");
    Ok(Sealability {
        sink: spec.sink_id.clone(),
        window_start: start,
        sealable: sealed || wm.is_some_and(|w| w >= needed),
        sealed,
        watermark: wm,
        sealable_at: needed,
        window,
    })
}

/// When a window may be sealed (its end plus grace), or why `start` is not a window.
fn seal_needs(spec: &WindowSpec, start: DateTime<Utc>) -> Result<DateTime<Utc>, SealError> {
    let start_ms = start.timestamp_millis();
    if window_start(start_ms, spec.window_ms) != start_ms {
        return Err(SealError::NotAligned {
            start,
            window_ms: spec.window_ms,
        });
    }
    Ok(ts(start_ms + spec.window_ms + spec.grace_ms))
}

/// Why a window cannot be sealed (yet).
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("window {start} is not sealable yet: the watermark is {}, it must pass {needed} (window end + grace)", watermark.map(|w| w.to_rfc3339()).unwrap_or_else(|| "unknown (no running sink has reported)".into()))]
    NotYet {
        start: DateTime<Utc>,
        watermark: Option<DateTime<Utc>>,
        needed: DateTime<Utc>,
    },
    #[error("{start} is not the start of a window of {window_ms} ms")]
    NotAligned {
        start: DateTime<Utc>,
        window_ms: i64,
    },
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

pub(super) fn ts(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The sink's watermark: the minimum over its partitions of what the sinks last stored.
pub async fn watermark(
    client: &Client,
    spec: &WindowSpec,
) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT CASE WHEN bool_and(watermark IS NOT NULL) THEN min(watermark) END FROM sink_offsets WHERE sink = $1",
            &[&spec.sink_id],
        )
        .await?;
    Ok(row.get(0))
}

/// One window, if it exists.
pub async fn window(
    client: &Client,
    spec: &WindowSpec,
    start: DateTime<Utc>,
) -> Result<Option<WindowInfo>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            &format!("SELECT {WINDOW_COLUMNS} FROM windows WHERE sink = $1 AND window_start = $2"),
            &[&spec.sink_id, &start],
        )
        .await?
        .as_ref()
        .map(window_of))
}

/// The newest windows, newest first.
pub async fn windows(
    client: &Client,
    spec: &WindowSpec,
    limit: i64,
) -> Result<Vec<WindowInfo>, tokio_postgres::Error> {
    Ok(client
        .query(
            &format!("SELECT {WINDOW_COLUMNS} FROM windows WHERE sink = $1 ORDER BY window_start DESC LIMIT $2"),
            &[&spec.sink_id, &limit],
        )
        .await?
        .iter()
        .map(window_of)
        .collect())
}

/// Seals a window: waits for nothing, refuses while the watermark is before end + grace
/// (unless `force`), and is idempotent.
pub async fn seal(
    client: &mut Client,
    spec: &WindowSpec,
    table: &str,
    window_column: &str,
    start: DateTime<Utc>,
    force: bool,
    sealed_by: &str,
) -> Result<SealOutcome, SealError> {
    let needed = seal_needs(spec, start)?;
    let end = ts(start.timestamp_millis() + spec.window_ms);
    let wm = watermark(client, spec).await?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO windows (sink, window_start, window_end) VALUES ($1, $2, $3) ON CONFLICT (sink, window_start) DO NOTHING",
        &[&spec.sink_id, &start, &end],
    )
    .await?;
    let current = window_of(
        &tx.query_one(
            &format!("SELECT {WINDOW_COLUMNS} FROM windows WHERE sink = $1 AND window_start = $2 FOR UPDATE"),
            &[&spec.sink_id, &start],
        )
        .await?,
    );
    if current.status == "sealed" {
        tx.commit().await?;
        return Ok(SealOutcome {
            window: current,
            already_sealed: true,
            watermark: wm,
            forced: false,
        });
    }
    if !force && wm.is_none_or(|w| w < needed) {
        return Err(SealError::NotYet {
            start,
            watermark: wm,
            needed,
        });
    }
    let rows: i64 = tx
        .query_one(
            &format!(
                "SELECT count(*) FROM \"{}\" WHERE \"{}\" = $1",
                table.replace('"', "\"\""),
                window_column.replace('"', "\"\"")
            ),
            &[&start],
        )
        .await?
        .get(0);
    let sealed = window_of(
        &tx.query_one(
            &format!(
                "UPDATE windows SET status = 'sealed', sealed_at = now(), sealed_by = $3, table_rows = $4 \
                 WHERE sink = $1 AND window_start = $2 RETURNING {WINDOW_COLUMNS}"
            ),
            &[&spec.sink_id, &start, &sealed_by, &rows],
        )
        .await?,
    );
    tx.commit().await?;
    Ok(SealOutcome {
        window: sealed,
        already_sealed: false,
        watermark: wm,
        forced: force,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_sealable_after_its_end_and_grace_and_only_at_its_start() {
        let spec = WindowSpec {
            sink_id: "app/users".into(),
            window_ms: 300_000,
            grace_ms: 30_000,
        };
        let start = ts(1_795_601_100_000);
        assert_eq!(
            seal_needs(&spec, start).unwrap(),
            ts(1_795_601_100_000 + 330_000)
        );
        assert!(matches!(
            seal_needs(&spec, ts(1_795_601_100_001)),
            Err(SealError::NotAligned {
                window_ms: 300_000,
                ..
            })
        ));
    }
}
