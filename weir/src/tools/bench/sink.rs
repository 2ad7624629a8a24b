//! `weir bench sink`: the PostgreSQL sink beside PostgreSQL's own `COPY` of the same rows
//! into the same table. Makes clean records once (synthetic users through the topology's
//! processing path) into a fresh topic and a fresh schema of the sink's database (named
//! `weir_bench_…`, `schema.sql` applied, dropped at the end), then, in alternating rounds:
//!
//! - the sink: the topology's PostgreSQL sink node, in this process, reads the topic from
//!   the start as a fresh sink and writes every record (rows, ledger, offsets, windows: its
//!   whole exactly-once batch); timed from its assignment until its stored offsets reach the
//!   topic's end;
//! - `COPY`: the rows the sink wrote, dumped with `COPY … TO` (binary), the table emptied,
//!   then loaded again with `COPY … FROM` (binary) in one transaction — the same rows into
//!   the same table with the same indexes.
//!
//! It prints rows/s for both, the medians and the sink's ratio to `COPY`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, TryStreamExt};
use weir_sinks::postgres::config::PostgresSinkConfig;
use weir_sinks::postgres::metrics::SinkMetrics;
use weir_sinks::postgres::sink::{self as postgres_sink, Health};
use weir_topology::pipeline::{Fate, Pipeline};
use weir_topology::Origin;

use super::median;

/// The schema every bench round applies: the project's own.
const SCHEMA: &str = include_str!("../../../../schema.sql");

/// Options of `weir bench sink`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The sink's database comes from its url or WEIR_DATABASE_URL (deploy/dev exports it); the bench \
works in a schema of its own there and drops it at the end.\n\n\
Example:\n  weir bench sink topology/users.toml --records 400000 --dirty 0.1 --rounds 3"
)]
pub struct SinkArgs {
    /// The topology file.
    #[arg(default_value = "topology/users.toml")]
    pub file: std::path::PathBuf,
    /// The PostgreSQL sink node (default: the topology's first).
    #[arg(long)]
    pub sink: Option<String>,
    /// The raw records made (the clean ones among them are the sink's input) and the rounds.
    #[command(flatten)]
    pub load: super::Load,
}

/// `url` with its session's search path set to `schema` (URL or key=value form).
pub fn with_search_path(url: &str, schema: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-c%20search_path%3D{schema}")
    } else {
        format!("{url} options='-c search_path={schema}'")
    }
}

pub fn sink(args: &SinkArgs) -> anyhow::Result<()> {
    let t = crate::cmd::load_with(&args.file, &args.load.kafka)?;
    let node = match &args.sink {
        Some(name) => t
            .node(name)
            .filter(|n| n.config::<PostgresSinkConfig>().is_some())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} has no PostgreSQL sink named \"{name}\"",
                    args.file.display()
                )
            })?,
        None => t
            .nodes
            .iter()
            .find(|n| n.config::<PostgresSinkConfig>().is_some())
            .ok_or_else(|| anyhow::anyhow!("{} has no PostgreSQL sink", args.file.display()))?,
    };
    let cfg = node
        .config::<PostgresSinkConfig>()
        .expect("a PostgreSQL sink")
        .clone();
    let settings = weir::services::postgres::settings(&t, node, &cfg, "bench")?;
    let kafka = t.settings.kafka.clone();
    let fresh = super::FreshTopics::create(&kafka, args.load.partitions, &["sink"])?;
    let topic = fresh.name("sink");
    // a schema is named like a topic, with underscores
    let schema = fresh.name("schema").replace('-', "_");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let url = with_search_path(&settings.database_url, &schema);
    let result = rt
        .block_on(async {
            let db = connect(&url).await?;
            db.batch_execute(&format!(
                "CREATE SCHEMA {schema}; SET search_path TO {schema};"
            ))
            .await
            .context("creating the bench schema")?;
            db.batch_execute(SCHEMA)
                .await
                .context("applying schema.sql in the bench schema")?;
            Ok::<_, anyhow::Error>(db)
        })
        .and_then(|db| {
            let clean = fill(args, &t, &kafka, &topic, &settings.topic)?;
            rounds(args, &rt, &db, settings, &url, &topic, clean)
        });
    let drop_schema = rt.block_on(async {
        connect(&url)
            .await?
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .context("dropping the bench schema")
    });
    result.and(drop_schema)
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to the sink's PostgreSQL (its url or WEIR_DATABASE_URL)")?;
    tokio::spawn(connection);
    Ok(client)
}

/// Makes `--records` synthetic users, runs them through the processing path and produces the
/// records bound for the sink's topic (`clean_topic`) into `topic`. Returns how many.
fn fill(
    args: &SinkArgs,
    t: &weir_topology::Topology,
    kafka: &weir_topology::config::KafkaSettings,
    topic: &str,
    clean_topic: &str,
) -> anyhow::Result<u64> {
    let sub = crate::cmd::processing_subtopology(t)?;
    let mut pipeline = Pipeline::build(t, &sub, None).context("building the pipeline")?;
    let raw_topic = pipeline.topics().into_iter().next().unwrap_or_default();
    let producer =
        weir::ingest::producer::IngestProducer::new(weir::ingest::producer::ProducerSettings {
            kafka: kafka.clone(),
            topic: topic.to_owned(),
            source: "bench",
            linger: Duration::from_millis(50),
        })?;
    let mut generator = weir::ingest::synthetic::Synthetic::new(7, args.load.dirty);
    let (mut key, mut value) = (String::new(), Vec::new());
    let mut fates: Vec<Fate> = Vec::with_capacity(4);
    let mut clean = 0u64;
    for offset in 0..args.load.records {
        generator.next_into(&mut key, &mut value);
        fates.clear();
        pipeline.process(
            Origin {
                topic: raw_topic.clone(),
                partition: 0,
                offset: offset as i64,
                timestamp: None,
                key: Some(key.as_bytes().to_vec()),
                value: Some(value.clone()),
                ..Origin::default()
            },
            &mut fates,
        );
        for r in fates.iter().filter_map(|f| f.record.as_ref()) {
            if *r.topic == *clean_topic {
                producer.send(r.key.as_deref(), &r.value, None, &[])?;
                clean += 1;
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    eprintln!(
        "{clean} clean records of {} synthetic users ({:.0}% bad) in {topic}",
        args.load.records,
        args.load.dirty * 100.0
    );
    anyhow::ensure!(
        clean > 0,
        "no record reached the sink's topic {clean_topic}"
    );
    Ok(clean)
}

/// One round's figures.
#[derive(Debug, Clone, Copy)]
struct Round {
    rows: u64,
    sink: Duration,
    copy: Duration,
}

fn rounds(
    args: &SinkArgs,
    rt: &tokio::runtime::Runtime,
    db: &tokio_postgres::Client,
    base: postgres_sink::SinkSettings,
    url: &str,
    topic: &str,
    records: u64,
) -> anyhow::Result<()> {
    let table = base.config.table.clone();
    let mut all = Vec::new();
    for round in 1..=args.load.rounds {
        rt.block_on(truncate_all(db))?;
        let mut settings = base.clone();
        settings.application_id = format!("{topic}-{round}");
        settings.topic = topic.to_owned();
        settings.database_url = url.to_owned();
        settings.upstream = None;
        let sink_id = settings.sink_id();
        let registry = prometheus::Registry::new();
        let metrics = SinkMetrics::register(&registry, &settings.node)?;
        let writes = metrics.batch_latency.clone();
        let shutdown = Arc::new(AtomicBool::new(false));
        let stop = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("weir-bench-sink".into())
            .spawn(move || {
                postgres_sink::run(settings, metrics, Arc::new(Health::default()), stop)
            })?;
        let timed = rt.block_on(wait_applied(db, &sink_id, records));
        shutdown.store(true, std::sync::atomic::Ordering::SeqCst);
        let summary = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the sink panicked"))?;
        let sink = timed?;
        summary.context("the sink stopped with an error")?;
        let (rows, copy) = rt.block_on(copy_again(db, &table))?;
        eprintln!(
            "round {round}: sink {:.0} rows/s ({rows} rows from {records} records in {:.2} s, {:.2} s of it in {} batch transactions); COPY {:.0} rows/s ({:.2} s)",
            rows as f64 / sink.as_secs_f64(),
            sink.as_secs_f64(),
            writes.get_sample_sum(),
            writes.get_sample_count(),
            rows as f64 / copy.as_secs_f64(),
            copy.as_secs_f64()
        );
        all.push(Round { rows, sink, copy });
    }
    let sink = median(
        all.iter()
            .map(|r| r.rows as f64 / r.sink.as_secs_f64())
            .collect(),
    );
    let copy = median(
        all.iter()
            .map(|r| r.rows as f64 / r.copy.as_secs_f64())
            .collect(),
    );
    let ratios: Vec<String> = all
        .iter()
        .map(|r| format!("{:.2}", r.copy.as_secs_f64() / r.sink.as_secs_f64()))
        .collect();
    println!(
        "{records} records, {} rows into {table}, {} rounds",
        all[0].rows, args.load.rounds
    );
    println!("PostgreSQL sink: {sink:.0} rows/s (median)");
    println!("COPY:            {copy:.0} rows/s (median)");
    println!(
        "sink / COPY: {:.2} of COPY's speed (median; rounds {})",
        median(
            all.iter()
                .map(|r| r.copy.as_secs_f64() / r.sink.as_secs_f64())
                .collect()
        ),
        ratios.join(", ")
    );
    Ok(())
}

/// Empties every table of the bench schema.
async fn truncate_all(db: &tokio_postgres::Client) -> anyhow::Result<()> {
    let tables: Vec<String> = db
        .query(
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = current_schema()",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    db.batch_execute(&format!("TRUNCATE {}", tables.join(", ")))
        .await
        .context("emptying the bench tables")
}

/// Waits until the sink has applied `records` records; the time from its assignment (its
/// offsets first stored) to then.
async fn wait_applied(
    db: &tokio_postgres::Client,
    sink_id: &str,
    records: u64,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut assigned: Option<Instant> = None;
    // prepared once: asked every 10 ms, it must not take the server's time from the sink
    let progress = db
        .prepare(
            "SELECT count(*), coalesce(sum(next_offset), 0)::bigint FROM sink_offsets WHERE sink = $1",
        )
        .await?;
    loop {
        let row = db.query_one(&progress, &[&sink_id]).await?;
        let (partitions, applied): (i64, i64) = (row.get(0), row.get(1));
        if partitions > 0 {
            assigned.get_or_insert_with(Instant::now);
        }
        if applied as u64 >= records {
            return Ok(assigned.map(|a| a.elapsed()).unwrap_or_default());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sink applied {applied} of {records} records in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Dumps the table's rows (binary), empties it and loads them again with `COPY` in one
/// transaction; returns the rows and the load's time.
async fn copy_again(db: &tokio_postgres::Client, table: &str) -> anyhow::Result<(u64, Duration)> {
    let rows: i64 = db
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0);
    let chunks: Vec<bytes::Bytes> = db
        .copy_out(&format!("COPY {table} TO STDOUT (FORMAT binary)"))
        .await?
        .try_collect()
        .await
        .context("dumping the sink's rows")?;
    db.batch_execute(&format!("TRUNCATE {table}")).await?;
    let started = Instant::now();
    db.batch_execute("BEGIN").await?;
    let sink = db
        .copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
        .await?;
    futures::pin_mut!(sink);
    for chunk in chunks {
        sink.feed(chunk).await?;
    }
    let copied = sink.finish().await.context("loading the rows with COPY")?;
    db.batch_execute("COMMIT").await?;
    let took = started.elapsed();
    anyhow::ensure!(copied == rows as u64, "COPY loaded {copied} rows of {rows}");
    Ok((rows as u64, took))
}

#[cfg(test)]
mod tests {
    use super::with_search_path;

    #[test]
    fn the_search_path_goes_into_either_form_of_url() {
        assert_eq!(
            with_search_path("postgres://u:p@h:5433/db", "s"),
            "postgres://u:p@h:5433/db?options=-c%20search_path%3Ds"
        );
        assert_eq!(
            with_search_path("postgres://h/db?sslmode=disable", "s"),
            "postgres://h/db?sslmode=disable&options=-c%20search_path%3Ds"
        );
        assert_eq!(
            with_search_path("host=h dbname=db", "s"),
            "host=h dbname=db options='-c search_path=s'"
        );
    }
}
