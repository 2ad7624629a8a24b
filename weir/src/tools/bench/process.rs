//! `weir bench process FILE`: the processing path's speed with no Kafka — what the engine
//! does with each record between the consumer and the producer (its origin, the processors,
//! the sink's output record) — over raw values read from a file, one per line, repeated for
//! at least `--min-time`. Reports records per second of CPU time of the thread that
//! processes (one core), and records per second of wall time. Records go through the nodes
//! `--batch` at a time, as the engine sends them ([`NODE_BATCH`]); `--batch 1` one at a time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use weir_topology::pipeline::{OutRecord, Pipeline, NODE_BATCH};
use weir_topology::Origin;

use crate::cmd::parse_duration;

/// Options of `weir bench process`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  weir bench process --synthetic 400000 --dirty 0.1\n  weir bench process raw.jsonl --topology topology/users.toml --min-time 10s"
)]
pub struct ProcessArgs {
    /// Raw record values, one per line (JSON lines, as `weir process` reads them); without
    /// it, `--synthetic` records.
    pub input: Option<PathBuf>,
    /// How many synthetic randomuser-shaped records to make when no file is given.
    #[arg(long, default_value_t = 400_000)]
    pub synthetic: usize,
    /// The fraction of bad synthetic records, of every kind.
    #[arg(long, default_value_t = 0.1)]
    pub dirty: f64,
    /// The topology file whose processing sub-topology runs.
    #[arg(long, default_value = "topology/users.toml")]
    pub topology: PathBuf,
    /// Repeat the input until at least this long has passed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub min_time: Duration,
    /// Records sent through the nodes together (the engine's path sends 8); 1: one record
    /// through every node before the next.
    #[arg(long, default_value_t = NODE_BATCH, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub batch: usize,
}

/// CPU time of the calling thread so far (`/proc/thread-self/schedstat`, nanoseconds).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

pub fn process(args: &ProcessArgs) -> anyhow::Result<()> {
    let t = crate::cmd::load(&args.topology)?;
    let sub = crate::cmd::processing_subtopology(&t)?;
    let mut pipeline = Pipeline::build(&t, &sub, None).context("building the pipeline")?;
    let topic = pipeline.topics().into_iter().next().unwrap_or_default();
    let (data, from) = match &args.input {
        Some(path) => (
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        ),
        None => {
            let mut g = weir::ingest::synthetic::Synthetic::new(7, args.dirty);
            let (mut key, mut value, mut data) = (String::new(), Vec::new(), Vec::new());
            for _ in 0..args.synthetic {
                g.next_into(&mut key, &mut value);
                value.retain(|b| *b != b'\n');
                data.extend_from_slice(&value);
                data.push(b'\n');
            }
            (
                data,
                format!("synthetic users (seed 7, {:.0}% bad)", args.dirty * 100.0),
            )
        }
    };
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .collect();
    anyhow::ensure!(!lines.is_empty(), "{from} has no records");
    // the engine's path: outputs are the records its producer sends, bytes moved into them
    let origin = |i: usize, line: &[u8]| Origin {
        topic: topic.clone(),
        partition: 0,
        offset: i as i64,
        timestamp: Some(1_764_000_000_000 + i as i64),
        key: Some(b"0b8c5e86-0e6f-4f0c-9d2c-7a3a8f1e2b4d".to_vec()),
        value: Some(weir_topology::record::value_copy(line)),
        ..Origin::default()
    };
    let batch = args.batch;
    // one at a time: the engine's one output buffer, reused; in batches: one per record
    let (mut one, mut outs): (Vec<OutRecord>, Vec<Vec<OutRecord>>) =
        (Vec::with_capacity(4), Vec::with_capacity(batch));
    // counted as the engine's producer takes them: their buffers serve the next outputs
    let count = |outs: &mut Vec<OutRecord>, tally: &mut Tally| {
        for r in outs.drain(..) {
            match r.headers.is_empty() {
                true => tally.clean += 1,
                false => tally.dead += 1,
            }
            tally.bytes_out += r.value.len() as u64;
            weir_topology::record::give_back(r.value);
        }
    };
    let mut run = |pipeline: &mut Pipeline, lines: &[&[u8]], tally: &mut Tally| {
        for (c, chunk) in lines.chunks(batch).enumerate() {
            let first = c * batch;
            if batch == 1 {
                one.clear();
                pipeline.process_into(origin(first, chunk[0]), &mut one);
                count(&mut one, tally);
            } else {
                outs.clear();
                pipeline.process_batch_into(
                    chunk.iter().enumerate().map(|(j, l)| origin(first + j, l)),
                    &mut outs,
                );
                for out in &mut outs {
                    count(out, tally);
                }
            }
        }
        tally.records += lines.len() as u64;
        tally.bytes_in += lines.iter().map(|l| l.len() as u64).sum::<u64>();
    };
    // warm up: caches, the allocator, lazy regexes
    run(
        &mut pipeline,
        &lines[..lines.len().min(10_000)],
        &mut Tally::default(),
    );
    let mut tally = Tally::default();
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    let mut passes = 0;
    while passes == 0 || wall0.elapsed() < args.min_time {
        run(&mut pipeline, &lines, &mut tally);
        passes += 1;
    }
    let (cpu, wall) = (thread_cpu() - cpu0, wall0.elapsed());
    let per = |d: Duration| tally.records as f64 / d.as_secs_f64();
    println!(
        "{} records ({} passes over {} lines of {}, {} at a time through the nodes): {} clean, {} dead letters",
        tally.records,
        passes,
        lines.len(),
        from,
        batch,
        tally.clean,
        tally.dead
    );
    println!(
        "processing: {:.0} records/s per core of CPU time ({:.2} µs a record, {:.0} MB/s in), {:.0} records/s of wall time; CPU {:.2} s, wall {:.2} s",
        per(cpu),
        cpu.as_secs_f64() * 1e6 / tally.records as f64,
        tally.bytes_in as f64 / cpu.as_secs_f64() / 1e6,
        per(wall),
        cpu.as_secs_f64(),
        wall.as_secs_f64()
    );
    Ok(())
}

#[derive(Default)]
struct Tally {
    records: u64,
    clean: u64,
    dead: u64,
    bytes_in: u64,
    bytes_out: u64,
}
