//! `weir top`: the vital signs of a running `weir run` per node, refreshed in the terminal
//! (like `vector top`): records in and out a second by output, totals, consumer lag,
//! transactions and dead letters, read from its public `/metrics`. `--once` prints one table
//! (two readings an interval apart) and exits, for scripts.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{parse_duration, Exit};

/// Options of `weir top`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  weir top\n  weir top --url http://10.0.0.5:5000 --interval 2s\n  weir top --once"
)]
pub struct TopArgs {
    /// The `weir run` to watch.
    #[arg(long, env = "WEIR_URL", default_value = "http://127.0.0.1:5000")]
    pub url: String,
    /// Time between readings.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print one table and exit.
    #[arg(long)]
    pub once: bool,
}

/// A series' labels, in order.
type Labels = Vec<(String, String)>;
/// One sample: (name, labels) → value.
type Sample = BTreeMap<(String, Labels), f64>;

/// A node's row: records in a second, records in so far, records out a second by output.
#[derive(Default)]
struct Row {
    in_rate: f64,
    in_total: f64,
    outs: Vec<(String, f64)>,
}

pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let read = || -> anyhow::Result<(Instant, Sample)> {
        let url = format!("{}/metrics", args.url.trim_end_matches('/'));
        let text = agent
            .get(&url)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .with_context(|| format!("reading {url}"))?;
        Ok((Instant::now(), parse(&text)))
    };
    let tty = std::io::stdout().is_terminal() && !args.once;
    let mut before = read().map_err(|e| {
        eprintln!("weir top: {e:#}");
        Exit(1)
    })?;
    loop {
        std::thread::sleep(args.interval);
        let now = match read() {
            Ok(n) => n,
            Err(e) if !args.once => {
                eprintln!("weir top: {e:#}; trying again");
                continue;
            }
            Err(e) => {
                eprintln!("weir top: {e:#}");
                return Err(Exit(1).into());
            }
        };
        let table = render(&args.url, &before, &now);
        let mut out = std::io::stdout().lock();
        let shown = if tty {
            write!(out, "\x1b[H\x1b[2J{table}")
        } else {
            writeln!(out, "{table}")
        };
        if shown.and_then(|_| out.flush()).is_err() || args.once {
            return Ok(());
        }
        before = now;
    }
}

/// Prometheus text format, the lines with a value (no comments).
fn parse(text: &str) -> Sample {
    let mut sample = Sample::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, labels(rest.trim_end_matches('}'))),
            None => (series, Vec::new()),
        };
        sample.insert((name.to_owned(), labels), value);
    }
    sample
}

/// `a="x",b="y"` (values may hold escaped quotes).
fn labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_owned(), value));
        rest = &after[end..];
    }
    out
}

fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The table for two readings.
fn render(url: &str, (t0, a): &(Instant, Sample), (t1, b): &(Instant, Sample)) -> String {
    let secs = t1.duration_since(*t0).as_secs_f64().max(1e-3);
    let rate = |key: &(String, Labels)| {
        (b.get(key).copied().unwrap_or(0.0) - a.get(key).copied().unwrap_or(0.0)).max(0.0) / secs
    };
    // per node: in/s, in total, outputs (name, /s)
    let mut nodes: BTreeMap<String, Row> = BTreeMap::new();
    for (key, total) in b {
        let (name, ls) = key;
        let Some(node) = label(ls, "node") else {
            continue;
        };
        let entry = nodes.entry(node.to_owned()).or_default();
        match name.as_str() {
            "weir_records_in_total" => {
                entry.in_rate = rate(key);
                entry.in_total = *total;
            }
            "weir_records_out_total" => {
                let out = label(ls, "output").unwrap_or("default").to_owned();
                entry.outs.push((out, rate(key)));
            }
            _ => {}
        }
    }
    let sum = |metric: &str, result: Option<&str>| -> f64 {
        b.iter()
            .filter(|((n, ls), _)| {
                n == metric && result.is_none_or(|r| label(ls, "result") == Some(r))
            })
            .map(|(_, v)| v)
            // from +0 (an empty f64 sum is -0, which prints as "-0")
            .fold(0.0, |a, v| a + v)
    };
    let sum_rate = |metric: &str| -> f64 {
        b.keys()
            .filter(|(n, _)| n == metric)
            .map(&rate)
            .fold(0.0, |a, v| a + v)
    };
    let mut s = format!(
        "weir top — {url} — {}\n\n{:<20} {:>10} {:>12}  {}\n",
        chrono::Utc::now().format("%H:%M:%S UTC"),
        "NODE",
        "IN/S",
        "IN TOTAL",
        "OUT/S BY OUTPUT"
    );
    for (node, row) in &nodes {
        let (in_rate, in_total) = (row.in_rate, row.in_total);
        let outs: Vec<String> = row
            .outs
            .iter()
            .map(|(o, r)| format!("{o} {r:.1}"))
            .collect();
        s.push_str(&format!(
            "{node:<20} {in_rate:>10.1} {in_total:>12.0}  {}\n",
            outs.join(" · ")
        ));
    }
    if nodes.is_empty() {
        s.push_str("(no records yet)\n");
    }
    s.push_str(&format!(
        "\nlag {:.0} records · transactions {:.0} committed, {:.0} aborted · dead letters {:.1}/s · rows {:.1}/s · live clients {:.0}\n",
        sum("weir_consumer_lag_records", None),
        sum("weir_transactions_total", Some("committed")),
        sum("weir_transactions_total", Some("aborted")),
        sum_rate("weir_dead_letters_total"),
        sum_rate("weir_sink_rows_written_total"),
        sum("weir_websocket_clients", None),
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "# HELP x\nweir_records_in_total{node=\"raw\"} 100\nweir_records_out_total{node=\"raw\",output=\"default\"} 90\nweir_records_out_total{node=\"raw\",output=\"undecodable\"} 10\nweir_transactions_total{result=\"committed\"} 5\n";
    const B: &str = "weir_records_in_total{node=\"raw\"} 300\nweir_records_out_total{node=\"raw\",output=\"default\"} 270\nweir_records_out_total{node=\"raw\",output=\"undecodable\"} 30\nweir_transactions_total{result=\"committed\"} 9\nweir_consumer_lag_records{subtopology=\"0\",topic=\"a\\\"b\",partition=\"0\"} 7\n";

    #[test]
    fn rates_per_node_and_output_from_two_readings() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let table = render("u", &(t0, parse(A)), &(t1, parse(B)));
        let row = table.lines().find(|l| l.starts_with("raw ")).unwrap();
        assert!(row.contains("100.0") && row.contains("300"), "{row}");
        assert!(row.contains("default 90.0 · undecodable 10.0"), "{row}");
        assert!(
            table.contains("lag 7 records · transactions 9 committed, 0 aborted"),
            "{table}"
        );
        assert_eq!(
            labels("subtopology=\"0\",topic=\"a\\\"b\""),
            vec![
                ("subtopology".into(), "0".into()),
                ("topic".into(), "a\"b".into())
            ]
        );
    }
}
