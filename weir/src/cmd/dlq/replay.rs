//! `weir dlq replay`: dead letters of a reason sent back to their source topics, each at most
//! once (a ledger topic in the same transaction), on the engine's loop.

use std::sync::atomic::Ordering;

use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use weir_sinks::dead_letter::reader::{Reader, Start};
use weir_sinks::dead_letter::replay::{
    ensure_ledger, ledger_topic, read_ledger, Decision, ReplayRules, Tally,
};

use super::replay_topic::replay_topic;
use super::{target_of, Common, Target, STALL};
use crate::cmd::Exit;

/// Options of `weir dlq replay`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Replays each dead letter at most once, whatever the reason asked for: a ledger topic records \
every replayed dead letter in the same transaction, so a rerun after a crash, or a later run for another reason, \
sends only what was never sent. Dead letters skipped, refused or unroutable now stay for a later run.\n\nExamples:\n  weir dlq replay --reason email.invalid --dry-run\n  weir dlq replay --reason email.invalid"
)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: Common,
    /// Replay dead letters with this reason (`field.missing` also matches `field.missing:email`).
    #[arg(long)]
    pub reason: String,
    /// Where to send them (default: the topic each record came from, as its headers say).
    #[arg(long)]
    pub to: Option<String>,
    /// Count what would be replayed; send and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse records already replayed this many times (the loop guard).
    #[arg(long, default_value_t = 3)]
    pub max_replays: u32,
    /// The ledger of replayed dead letters (default: `<application id>-dlq-replay-ledger`,
    /// created compacted when missing).
    #[arg(long)]
    pub ledger: Option<String>,
    /// Records per transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}
pub fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let t = crate::cmd::load_with(&args.common.topology, &args.common.kafka)?;
    let target = target_of(&t, &args.common)?;
    let rules = ReplayRules {
        reason: args.reason.clone(),
        since: args.common.since,
        max_replays: args.max_replays,
        to: args.to.clone(),
    };
    let ledger = args
        .ledger
        .clone()
        .unwrap_or_else(|| ledger_topic(&target.application_id));
    let shutdown = weir::signals::shutdown_flag()?;
    let tally = if args.dry_run {
        dry_run(&target, &rules, &ledger)?
    } else {
        ensure_ledger(&target.kafka, &ledger)
            .with_context(|| format!("creating the replay ledger topic {ledger}"))?;
        let mut tally = Tally::default();
        for topic in &target.topics {
            tally = replay_topic(
                args.batch, &target, topic, &rules, &ledger, &shutdown, tally,
            )?;
            if shutdown.load(Ordering::Relaxed) {
                break;
            }
        }
        tally
    };
    let verb = if args.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{verb} {} dead letter{} with reason {} to {}{}",
        tally.replayed,
        if tally.replayed == 1 { "" } else { "s" },
        args.reason,
        args.to.as_deref().unwrap_or("their source topics"),
        if args.dry_run {
            " (dry run: nothing sent, nothing written to the ledger)"
        } else {
            ""
        }
    );
    println!(
        "  examined {}, already replayed {} (in the ledger {ledger}), skipped {} (other reasons or before --since), refused {} (replayed {} times already: the loop guard, --max-replays), previews of refused records {}, no source topic {}",
        tally.examined,
        tally.already,
        tally.skipped,
        tally.refused,
        args.max_replays,
        tally.truncated,
        tally.unroutable
    );
    if shutdown.load(Ordering::Relaxed) {
        eprintln!("interrupted: the committed part is kept; run again to go on");
        return Err(Exit(130).into());
    }
    Ok(())
}

/// What a replay would do, from the ledger and the dead letters; sends nothing.
fn dry_run(target: &Target, rules: &ReplayRules, ledger: &str) -> anyhow::Result<Tally> {
    let replayed = match read_ledger(&target.kafka, ledger) {
        Ok(keys) => keys,
        // no ledger yet: nothing replayed yet
        Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition)) => {
            Default::default()
        }
        Err(e) => return Err(e).with_context(|| format!("reading the replay ledger {ledger}")),
    };
    let mut reader = Reader::open(&target.kafka, &target.topics, Start::Beginning)
        .with_context(|| format!("reading {}", target.topics.join(", ")))?;
    let mut tally = Tally::default();
    reader
        .read_to_end(STALL, |d| {
            tally.examined += 1;
            match rules.decide(&d, &replayed) {
                Decision::Replay(_) => tally.replayed += 1,
                Decision::Skip => tally.skipped += 1,
                Decision::Refuse => tally.refused += 1,
                Decision::Truncated => tally.truncated += 1,
                Decision::Unroutable => tally.unroutable += 1,
                Decision::Already => tally.already += 1,
            }
        })
        .context("reading the dead-letter topic")?;
    Ok(tally)
}
