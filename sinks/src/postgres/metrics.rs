//! The PostgreSQL sink's metrics, labelled by sink.

use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use super::writer::Outcome;

/// Metrics of one PostgreSQL sink. Cloning shares them.
#[derive(Clone)]
pub struct SinkMetrics {
    pub records: IntCounter,
    pub rows_written: IntCounter,
    pub rejects: IntCounter,
    pub batch_latency: Histogram,
    pub windows_sealed: IntCounter,
    pub late_records: IntCounterVec,
    pub watermark_lag: Gauge,
    pub degraded: IntGauge,
    /// Dead letters the sink wrote into its outbox.
    pub dead_letters: IntCounter,
    /// Records PostgreSQL refused even alone, by SQLSTATE.
    pub unwritable: IntCounterVec,
    /// Window audits by result (passed, failed).
    pub audits: IntCounterVec,
    /// Seconds since the end of the oldest window still open (0 when none has ended).
    pub unsealed_window_age: Gauge,
}

impl SinkMetrics {
    /// Registers the metrics of sink `sink` in `registry`.
    pub fn register(registry: &Registry, sink: &str) -> Result<Self, prometheus::Error> {
        let l = |o: Opts| o.const_label("sink", sink);
        let records = IntCounter::with_opts(l(Opts::new(
            "sink_records_total",
            "Records a PostgreSQL sink applied (rows, rejects or late)",
        )))?;
        let rows_written = IntCounter::with_opts(l(Opts::new(
            "sink_rows_written_total",
            "Rows inserted or updated by a PostgreSQL sink",
        )))?;
        let rejects = IntCounter::with_opts(l(Opts::new(
            "sink_rejects_total",
            "Rows PostgreSQL rejected, kept in the rejects table",
        )))?;
        let batch_latency = Histogram::with_opts(
            HistogramOpts::new(
                "sink_batch_latency_seconds",
                "Time to write one batch in one PostgreSQL transaction",
            )
            .const_label("sink", sink)
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let windows_sealed =
            IntCounter::with_opts(l(Opts::new("sink_windows_sealed_total", "Windows sealed")))?;
        let late_records = IntCounterVec::new(
            l(Opts::new(
                "sink_late_records_total",
                "Records for sealed windows, by late policy",
            )),
            &["policy"],
        )?;
        let watermark_lag = Gauge::with_opts(l(Opts::new(
            "sink_watermark_lag_seconds",
            "Wall clock minus the sink's watermark",
        )))?;
        let degraded = IntGauge::with_opts(l(Opts::new(
            "sink_degraded",
            "1 while the sink cannot write to PostgreSQL",
        )))?;
        let dead_letters = IntCounter::with_opts(l(Opts::new(
            "sink_dead_letters_total",
            "Dead letters a PostgreSQL sink wrote into its outbox (late, refused, bad times)",
        )))?;
        let unwritable = IntCounterVec::new(
            l(Opts::new(
                "sink_unwritable_records_total",
                "Records PostgreSQL refused even when written alone, by SQLSTATE: kept in rejects and the dead-letter topic",
            )),
            &["sqlstate"],
        )?;
        let audits = IntCounterVec::new(
            l(Opts::new(
                "sink_audits_total",
                "Window audits of a PostgreSQL sink, by result (passed, failed)",
            )),
            &["result"],
        )?;
        let unsealed_window_age = Gauge::with_opts(l(Opts::new(
            "sink_unsealed_window_age_seconds",
            "Seconds since the end of the oldest window still open (0 when no open window has ended); read when /metrics is scraped",
        )))?;
        let metrics = Self {
            records,
            rows_written,
            rejects,
            batch_latency,
            windows_sealed,
            late_records,
            watermark_lag,
            degraded,
            dead_letters,
            unwritable,
            audits,
            unsealed_window_age,
        };
        for result in ["passed", "failed"] {
            metrics.audits.with_label_values(&[result]);
        }
        for c in metrics.collectors() {
            registry.register(c)?;
        }
        Ok(metrics)
    }

    /// Takes this sink's metrics out of `registry` (before the sink starts again, after a
    /// topology reload).
    pub fn unregister(&self, registry: &Registry) {
        for c in self.collectors() {
            let _ = registry.unregister(c);
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.dead_letters.clone()),
            Box::new(self.unwritable.clone()),
            Box::new(self.records.clone()),
            Box::new(self.rows_written.clone()),
            Box::new(self.rejects.clone()),
            Box::new(self.batch_latency.clone()),
            Box::new(self.windows_sealed.clone()),
            Box::new(self.late_records.clone()),
            Box::new(self.watermark_lag.clone()),
            Box::new(self.degraded.clone()),
            Box::new(self.audits.clone()),
            Box::new(self.unsealed_window_age.clone()),
        ]
    }

    /// Metrics not registered anywhere (tests, one-off commands).
    pub fn unregistered(sink: &str) -> Self {
        Self::register(&Registry::new(), sink).expect("fresh registry")
    }

    pub fn observe(&self, o: &Outcome, latency: Duration) {
        self.records.inc_by(o.records);
        self.rows_written.inc_by(o.rows_written);
        self.rejects.inc_by(o.rejected);
        self.dead_letters.inc_by(o.dead_letters);
        if o.records > 0 {
            self.batch_latency.observe(latency.as_secs_f64());
        }
        for (policy, n) in [
            ("dead_letter", o.late_dead_letter),
            ("drop", o.late_dropped),
            ("accept", o.late_accepted),
        ] {
            if n > 0 {
                self.late_records.with_label_values(&[policy]).inc_by(n);
            }
        }
    }
}
