//! The `weir` command line: one subcommand per job, each in its own module.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage error (clap), 69 a subcommand that is
//! not built yet, 78 a configuration error (as `vector validate`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code of a subcommand that is planned but not built yet (EX_UNAVAILABLE).
const EXIT_NOT_BUILT: u8 = 69;

/// Weir: a Kafka Streams-style stream processing topology with exactly-once delivery into
/// Kafka and PostgreSQL.
#[derive(Parser, Debug)]
#[command(name = "weir", version, about, long_about = None)]
#[command(
    after_help = "Example:\n  weir check topology/users.toml\n  weir run topology/users.toml"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a topology against Kafka and PostgreSQL (exactly once).
    Run,
    /// Check a topology file and report every problem at once (exit 78 on error).
    Check,
    /// Print a topology's sub-topologies (text, DOT or Mermaid).
    Describe,
    /// Run the test cases written in a topology file, offline.
    Test,
    /// Run the processor chain offline on JSON lines from stdin and print each record's fate.
    Process,
    /// Produce raw records into Kafka from randomuser.me or a synthetic generator.
    Ingest,
    /// Inspect and replay the dead-letter topic.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Audit a sealed window: compare the clean topic with the ledger and the rows.
    Audit,
    /// Benchmark a topology on this machine.
    Bench,
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// Show dead letters in a table or as JSON lines.
    Tail,
    /// Count dead letters by reason, node and hour.
    Stats,
    /// Send dead letters back to the raw topic, exactly once.
    Replay,
}

/// A planned subcommand that does not exist yet: say so plainly, produce no output.
fn not_built(name: &str, issue: u32) -> ExitCode {
    eprintln!("weir {name}: not built yet (planned in issue #{issue})");
    ExitCode::from(EXIT_NOT_BUILT)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => not_built("run", 3),
        Command::Check => not_built("check", 3),
        Command::Describe => not_built("describe", 3),
        Command::Test => not_built("test", 3),
        Command::Process => not_built("process", 3),
        Command::Ingest => not_built("ingest", 4),
        Command::Dlq { command } => match command {
            DlqCommand::Tail => not_built("dlq tail", 8),
            DlqCommand::Stats => not_built("dlq stats", 8),
            DlqCommand::Replay => not_built("dlq replay", 8),
        },
        Command::Audit => not_built("audit", 5),
        Command::Bench => not_built("bench", 3),
    }
}
