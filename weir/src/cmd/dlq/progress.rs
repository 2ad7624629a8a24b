//! The replay's progress on standard error: a bar redrawn in place on a terminal, a line
//! every two seconds otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use weir_sinks::dead_letter::replay::Tally;

/// A progress bar on a terminal, a line every few seconds elsewhere.
pub(super) struct Progress {
    total: u64,
    tty: bool,
    last: Instant,
    started: Instant,
}

impl Progress {
    pub(super) fn new(total: u64) -> Self {
        Self {
            total,
            tty: std::io::stderr().is_terminal(),
            last: Instant::now(),
            started: Instant::now(),
        }
    }

    pub(super) fn show(&mut self, t: &Tally) {
        if !self.tty && self.last.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last = Instant::now();
        let frac = if self.total == 0 {
            1.0
        } else {
            (t.examined as f64 / self.total as f64).min(1.0)
        };
        let filled = (frac * 30.0).round() as usize;
        let line = format!(
            "[{}{}] {:>3.0}% {}/{} examined · {} replayed · {} refused · {:.0}s",
            "#".repeat(filled),
            "-".repeat(30 - filled),
            frac * 100.0,
            t.examined,
            self.total,
            t.replayed,
            t.refused,
            self.started.elapsed().as_secs_f64()
        );
        if self.tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }
}
