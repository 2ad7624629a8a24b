//! The `weir` command line: one subcommand per job, each in its own module under `cmd/`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage error, 3 fenced by another instance,
//! 4 a record had no possible fate (its output and then its dead letter were refused),
//! 77 Kafka refused the credentials or the TLS handshake, 78 a configuration error (as `vector validate`), 130 interrupted (`dlq replay`).

mod cmd;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Weir: a Kafka Streams-style stream processing topology with exactly-once delivery into
/// Kafka and PostgreSQL.
#[derive(Parser, Debug)]
#[command(name = "weir", version, about, long_about = None)]
#[command(
    after_help = "Examples:\n  weir check topology/users.toml\n  weir process topology/users.toml < raw.jsonl\n  weir run topology/users.toml"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: text for people, or json — one object per line
    /// with timestamp, level, target, message and the event's fields — for log shippers.
    #[arg(
        long,
        global = true,
        env = "WEIR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a topology against Kafka (exactly once).
    #[command(after_help = "Example:\n  WEIR_INSTANCE=a weir run topology/users.toml")]
    Run(cmd::run::RunArgs),
    /// Check a topology file and report every problem at once (exit 78 on error).
    #[command(after_help = "Example:\n  weir check topology/users.toml")]
    Check { file: PathBuf },
    /// Print a topology's sub-topologies (text, DOT, Mermaid or JSON).
    #[command(
        after_help = "Example:\n  weir describe topology/users.toml --format dot | dot -Tsvg > users.svg"
    )]
    Describe {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: cmd::describe::Format,
    },
    /// What an edit of a topology file changes, node by node, and whether a running
    /// `weir run --watch` applies it live or restarts which sub-topologies.
    #[command(after_help = "Example:\n  weir diff topology/users.toml edited.toml")]
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: cmd::diff::Format,
    },
    /// Run the test cases written in a topology file, offline.
    #[command(after_help = "Example:\n  weir test topology/users.toml")]
    Test { file: PathBuf },
    /// Run the processor chain offline on raw values (one per line on stdin) and print each
    /// record's fate as JSON lines.
    #[command(
        after_help = "Example:\n  echo '{\"name\":{\"first\":\"a\"}}' | weir process topology/users.toml"
    )]
    Process { file: PathBuf },
    /// Produce raw records into Kafka from randomuser.me or a synthetic generator.
    Ingest(tools::ingest::IngestArgs),
    /// Inspect and replay the dead-letter topic.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Show the records on an edge of a running topology as they pass (admin token).
    Tap(cmd::tap::TapArgs),
    /// Watch a running topology's vital signs per node, refreshed in the terminal.
    Top(cmd::top::TopArgs),
    /// Audit a sealed window: compare the clean topic with the ledger and the rows.
    Audit(cmd::audit::AuditArgs),
    /// Benchmarks on this machine.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  weir completions bash > /etc/bash_completion.d/weir\n  weir completions zsh > \"${fpath[1]}/_weir\"\n  weir completions fish > ~/.config/fish/completions/weir.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// The live view under load: websocket clients, greetings/s, fan-out latency, memory.
    Live(tools::bench::LiveArgs),
    /// The exactly-once loop's throughput over fresh synthetic records.
    Topology(tools::bench::TopologyArgs),
    /// The processing path's records/s per core of CPU time, with no Kafka.
    Process(tools::bench::ProcessArgs),
    /// The PostgreSQL sink beside COPY of the same rows into the same table.
    Sink(tools::bench::SinkArgs),
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// Show dead letters (why, whence, the value) in a table or as JSON lines.
    Tail(cmd::dlq::TailArgs),
    /// Count dead letters by reason, node and hour.
    Stats(cmd::dlq::StatsArgs),
    /// Send dead letters back to the raw topic (or another), exactly once.
    Replay(cmd::dlq::ReplayArgs),
}

fn init_logging(format: LogFormat) {
    let wanted = std::env::var("WEIR_LOG").unwrap_or_else(|_| "info".to_owned());
    let mut filter = tracing_subscriber::EnvFilter::try_new(&wanted)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // rust-rdkafka's own lines (a client's statistics, about a kilobyte a second, at info)
    // only when asked for by name; librdkafka's (target `librdkafka`) follow the level
    if !wanted.contains("rdkafka=") && !wanted.contains("rdkafka::") {
        filter = filter.add_directive("rdkafka=warn".parse().expect("a valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Fixes glibc's mmap threshold at 1 MiB (unless `MALLOC_MMAP_THRESHOLD_` sets it), before
/// any thread starts. By default glibc raises the threshold to the largest block freed so far
/// (up to 32 MiB) and lets each thread's arena keep twice that unreturned: after the sink's
/// multi-megabyte batches, every arena kept its own. Measured on `weir run` of every
/// sub-topology under 400,000 records at full speed, 3 alternating pairs: peak memory 100–112
/// MB before, 85–93 MB after, CPU time unchanged.
fn fix_malloc_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        // SAFETY: mallopt only sets a parameter of glibc's allocator; it is called before
        // this process starts any thread
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 1 << 20);
        }
    }
}

fn main() -> ExitCode {
    fix_malloc_threshold();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match &cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Check { file } => cmd::check::run(file),
        Command::Describe { file, format } => cmd::describe::run(file, *format),
        Command::Diff { old, new, format } => cmd::diff::run(old, new, *format),
        Command::Test { file } => cmd::test::run(file),
        Command::Process { file } => cmd::process::run(file),
        Command::Ingest(args) => tools::ingest::run(args),
        Command::Dlq { command } => match command {
            DlqCommand::Tail(args) => cmd::dlq::tail(args),
            DlqCommand::Stats(args) => cmd::dlq::stats(args),
            DlqCommand::Replay(args) => cmd::dlq::replay(args),
        },
        Command::Audit(args) => cmd::audit::run(args),
        Command::Tap(args) => cmd::tap::run(args),
        Command::Top(args) => cmd::top::run(args),
        Command::Completions { shell } => {
            // made in memory first: a closed pipe (`| head`) ends the output, not the process
            let mut script = Vec::new();
            clap_complete::generate(
                *shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "weir",
                &mut script,
            );
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
        Command::Bench { command } => match command {
            BenchCommand::Live(args) => tools::bench::live(args),
            BenchCommand::Topology(args) => tools::bench::topology(args),
            BenchCommand::Process(args) => tools::bench::process(args),
            BenchCommand::Sink(args) => tools::bench::sink(args),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<cmd::Exit>() {
            Some(cmd::Exit(code)) => ExitCode::from(*code),
            None => {
                eprintln!("weir: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
