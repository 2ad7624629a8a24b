//! The replay's progress on standard error, with indicatif: a bar redrawn in place on a
//! terminal; elsewhere (a log, CI) a plain line every two seconds, since a bar's control
//! characters would only clutter a file.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use weir_sinks::dead_letter::replay::Tally;

/// A bar on a terminal, a line every few seconds elsewhere.
pub(super) struct Progress {
    bar: ProgressBar,
    tty: bool,
    last: Instant,
}

impl Progress {
    pub(super) fn new(total: u64) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(
            Some(total),
            if tty {
                ProgressDrawTarget::stderr_with_hz(10)
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template(
                "[{bar:30}] {percent:>3}% {pos}/{len} examined · {msg} · {elapsed}",
            )
            .expect("a valid template")
            .progress_chars("#>-"),
        );
        Self {
            bar,
            tty,
            last: Instant::now(),
        }
    }

    pub(super) fn show(&mut self, t: &Tally) {
        self.bar.set_position(t.examined);
        self.bar
            .set_message(format!("{} replayed · {} refused", t.replayed, t.refused));
        if !self.tty && self.last.elapsed() >= Duration::from_secs(2) {
            self.last = Instant::now();
            let total = self.bar.length().unwrap_or(0);
            eprintln!(
                "{}/{} examined · {} replayed · {} refused · {:.0}s",
                t.examined,
                total,
                t.replayed,
                t.refused,
                self.bar.elapsed().as_secs_f64()
            );
        }
    }

    /// Leaves the bar as it ended.
    pub(super) fn finish(&self) {
        self.bar.abandon();
    }
}
