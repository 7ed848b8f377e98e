//! The `report` command: one markdown table from a file of JSON result lines.
//!
//! Rows are the scenarios in the order they first appear, each with the numbers
//! that matter for its mode; a cell is the median over the rounds of the run that
//! measured it; columns are the targets, then the subject divided by
//! the best of its peers, then warnings: the proxy's core was not the one that ran
//! out, other work on the machine took a noticeable share of a core, or the scenario
//! failed for a target (its cell then shows "—" and the first error). A record with
//! a `skipped` reason (a scenario that does not apply to a target) gives a plain "—".

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

/// Which way a row improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// One row of the table, derived from one scenario.
struct Row {
    scenario: String,
    label: String,
    value: fn(&Value) -> Option<f64>,
    better: Better,
    decimals: usize,
    /// Whether the proxy should have saturated its core in this row's scenario.
    saturating: bool,
    /// The row that carries the scenario's error count.
    first: bool,
}

pub struct Options<'a> {
    pub results: &'a Path,
    pub targets: Vec<String>,
    pub subject: String,
    pub peers: Vec<String>,
    /// Below this share of busy time the proxy's core was not the limit.
    pub busy_threshold: f64,
    /// Above this share of a core used by other processes a result is noisy.
    pub noise_threshold: f64,
    pub notes: Vec<String>,
}

pub fn render(o: &Options<'_>) -> Result<String, String> {
    let text = std::fs::read_to_string(o.results)
        .map_err(|e| format!("cannot read {}: {e}", o.results.display()))?;
    // Each round of a run adds one record per scenario and target; a cell is their
    // median, so that one disturbed round does not decide a ratio.
    let mut records: HashMap<(String, String), Vec<Value>> = HashMap::new();
    // Each scenario's key, title, mode and the first `params` seen.
    let mut scenarios: Vec<(String, String, String, Value)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: {e}", o.results.display(), i + 1))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let (scenario, target) = (field("scenario"), field("target"));
        let params = v.get("params").cloned().unwrap_or(Value::Null);
        match scenarios.iter_mut().find(|(s, ..)| *s == scenario) {
            None => scenarios.push((scenario.clone(), field("title"), field("mode"), params)),
            // A skipped target's record may come first, with no title or params.
            Some((_, title, _, first)) => {
                if title.is_empty() {
                    *title = field("title");
                }
                if first.is_null() {
                    *first = params;
                }
            }
        }
        records.entry((scenario, target)).or_default().push(v);
    }

    let rows: Vec<Row> = scenarios
        .iter()
        .flat_map(|(s, title, mode, params)| rows_for(s, title, mode, params))
        .collect();

    let mut out = String::new();
    let _ = write!(out, "| Scenario |");
    for t in &o.targets {
        let _ = write!(out, " {t} |");
    }
    let _ = writeln!(out, " {} ÷ best peer | Warnings |", o.subject);
    let _ = write!(out, "|---|");
    for _ in &o.targets {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out, "---:|---|");

    for row in &rows {
        let runs = |t: &str| {
            records
                .get(&(row.scenario.clone(), t.to_owned()))
                .map(Vec::as_slice)
        };
        let get = |t: &str| runs(t).and_then(|r| median(row, r));
        let _ = write!(out, "| {} |", row.label);
        for t in &o.targets {
            let cell = match runs(t) {
                None => "not run".to_owned(),
                Some(all) => {
                    let mut c = match get(t) {
                        Some(m) => number(m.value, row.decimals),
                        None => "—".to_owned(),
                    };
                    let middle = get(t).map_or(&all[all.len() - 1], |m| m.record);
                    if !warnings(row, middle, o).is_empty() {
                        c.push_str(" ⚠");
                    }
                    let errors: u64 = all
                        .iter()
                        .filter_map(|r| r.get("errors_total").and_then(Value::as_u64))
                        .sum();
                    if row.first && errors > 0 {
                        let _ = write!(c, " ({errors} err)");
                    }
                    c
                }
            };
            let _ = write!(out, " {cell} |");
        }
        let _ = write!(
            out,
            " {} |",
            ratio(row, &|t| get(t).map(|m| m.value), &o.subject, &o.peers)
        );
        let warn = o
            .targets
            .iter()
            .filter_map(|t| {
                let w = match get(t) {
                    Some(m) => warnings(row, m.record, o),
                    None => failure(row, runs(t)?).into_iter().collect(),
                };
                (!w.is_empty()).then(|| format!("{t}: {}", w.join(", ")))
            })
            .collect::<Vec<_>>()
            .join("; ");
        let _ = writeln!(out, " {warn} |");
    }

    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "↑ higher is better, ↓ lower is better. \"{} ÷ best peer\" divides {} by the best of {} on that row: above 1 is better on ↑ rows, below 1 is better on ↓ rows.",
        o.subject,
        o.subject,
        o.peers.join(", ")
    );
    let _ = writeln!(
        out,
        "CPU µs/op is the proxy process's own user+system time over the measured interval divided by the operations in it (each echoed message counted once). ⚠ marks a cell with a warning: \"core N% busy\" means the proxy's core was under {:.0}% busy, so the client and backend core set the rate, not the proxy; \"other processes used N% of a core\" means processes outside the benchmark (not the kernel's network work) used more than {:.0}% of a core during the measurement, so the cell is noisy.",
        o.busy_threshold * 100.0,
        o.noise_threshold * 100.0
    );
    for n in &o.notes {
        let _ = writeln!(out, "{n}");
    }
    Ok(out)
}

fn rows_for(scenario: &str, title: &str, mode: &str, params: &Value) -> Vec<Row> {
    let row = |label: &str, value: fn(&Value) -> Option<f64>, better, decimals, saturating| Row {
        scenario: scenario.to_owned(),
        label: format!(
            // A label that begins with a comma qualifies the title.
            "{title}{}{label} {}",
            if label.starts_with(',') { "" } else { ": " },
            if better == Better::Higher {
                "↑"
            } else {
                "↓"
            }
        ),
        value,
        better,
        decimals,
        saturating,
        first: false,
    };
    let rate = |r: &Value| num(r, &["rate"]);
    let cpu = |r: &Value| num(r, &["cpu_us_per_op"]);
    let mut rows = match mode {
        "throughput" => vec![
            row("msg/s", rate, Better::Higher, 0, true),
            row("proxy CPU µs/msg", cpu, Better::Lower, 2, false),
        ],
        "pingpong" => vec![
            row(
                "p50 µs",
                |r| num(r, &["latency_us", "p50"]),
                Better::Lower,
                1,
                false,
            ),
            row(
                "p99 µs",
                |r| num(r, &["latency_us", "p99"]),
                Better::Lower,
                1,
                false,
            ),
            row(
                "p99.9 µs",
                |r| num(r, &["latency_us", "p999"]),
                Better::Lower,
                1,
                false,
            ),
            row("proxy CPU µs/msg", cpu, Better::Lower, 2, false),
        ],
        "handshakes" => vec![
            row("handshakes/s", rate, Better::Higher, 0, true),
            row("proxy CPU µs/handshake", cpu, Better::Lower, 1, false),
        ],
        // HTTP/1.1 from loadgen, HTTP/2 GETs and gRPC calls from h2load: the same
        // figures, a gRPC call counted as one request.
        "http" | "h2load" | "grpc" => vec![
            row("req/s", rate, Better::Higher, 0, true),
            row("proxy CPU µs/req", cpu, Better::Lower, 2, false),
        ],
        "idle" => {
            let mut rows = vec![row(
                "proxy KiB/tunnel",
                |r| num(r, &["kib_per_tunnel"]),
                Better::Lower,
                2,
                false,
            )];
            // Results from before the reading after the surge have no such row.
            if let Some(ms) = num(params, &["surge_ms"]) {
                let when = if ms > 0.0 {
                    format!("{} after opening", duration_name(ms))
                } else {
                    "as the last opened".to_owned()
                };
                rows.push(row(
                    &format!(", {when}: proxy KiB/tunnel"),
                    |r| num(r, &["kib_per_tunnel_surge"]),
                    Better::Lower,
                    2,
                    false,
                ));
            }
            rows
        }
        _ => vec![row("rate", rate, Better::Higher, 0, false)],
    };
    if let Some(r) = rows.first_mut() {
        r.first = true;
    }
    rows
}

/// "1 s", "1.5 s", "500 ms".
fn duration_name(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", ms / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

/// What is wrong with one cell's measurement, if anything: the proxy's core was not
/// saturated (on rows where it should be), or other processes took a share of a core
/// (said once per scenario, on its first row).
fn warnings(row: &Row, r: &Value, o: &Options<'_>) -> Vec<String> {
    let mut w = Vec::new();
    let has_proxy = r.get("has_proxy").and_then(Value::as_bool) == Some(true);
    if row.saturating
        && has_proxy
        && let Some(b) = num(r, &["proxy_core_busy"]).filter(|&b| b < o.busy_threshold)
    {
        // Rounded down: just under the threshold must not read as the threshold.
        w.push(format!("core {:.0}% busy", (b * 100.0).floor()));
    }
    if row.first
        && let Some(x) = num(r, &["others_cores"]).filter(|&x| x > o.noise_threshold)
    {
        let who = r
            .get("busiest_other")
            .and_then(Value::as_str)
            .map_or(String::new(), |n| format!(" (mostly {n})"));
        w.push(format!(
            "other processes used {:.0}% of a core{who}",
            x * 100.0
        ));
    }
    w
}

/// Why a target has no figure on a row where it ran and failed: the first error of
/// its last round, said once per scenario, on its first row. Nothing for a skipped
/// target or one that has no such figure (the direct column's memory, say).
fn failure(row: &Row, runs: &[Value]) -> Option<String> {
    let last = runs.last()?;
    let errors = last
        .get("errors_total")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if !row.first || last.get("skipped").is_some() || errors == 0 {
        return None;
    }
    let why = last
        .get("first_error")
        .and_then(Value::as_str)
        .unwrap_or("see the loadgen summary");
    Some(format!("failed: {}", why.replace('|', "/")))
}

/// A cell's figure over its rounds, and the round it came from.
struct Median<'a> {
    value: f64,
    /// The round whose figure is the median (the lower middle one of an even
    /// count), whose warnings the cell shows.
    record: &'a Value,
}

/// The median of a row's figure over the rounds that have it. The lower middle one
/// of an even count rather than a mean of two, so the figure is one that was
/// measured, with that round's warnings.
fn median<'a>(row: &Row, runs: &'a [Value]) -> Option<Median<'a>> {
    let mut figures: Vec<(f64, &Value)> = runs
        .iter()
        .filter_map(|r| Some(((row.value)(r)?, r)))
        .collect();
    figures.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (value, record) = *figures.get(figures.len().checked_sub(1)? / 2)?;
    Some(Median { value, record })
}

fn ratio(row: &Row, get: &dyn Fn(&str) -> Option<f64>, subject: &str, peers: &[String]) -> String {
    let Some(mine) = get(subject) else {
        return "—".to_owned();
    };
    let best = peers
        .iter()
        .filter_map(|p| Some((p, get(p)?)))
        .filter(|(_, x)| *x > 0.0)
        .reduce(|a, b| match row.better {
            Better::Higher if b.1 > a.1 => b,
            Better::Lower if b.1 < a.1 => b,
            _ => a,
        });
    match best {
        Some((p, x)) => format!("{:.2}× (vs {p})", mine / x),
        None => "—".to_owned(),
    }
}

/// A number with thousands separators for whole numbers, fixed decimals otherwise.
fn number(x: f64, decimals: usize) -> String {
    if decimals > 0 {
        return format!("{x:.decimals$}");
    }
    let s = format!("{:.0}", x.abs());
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(number(1234567.4, 0), "1,234,567");
        assert_eq!(number(999.0, 0), "999");
        assert_eq!(number(1.23456, 2), "1.23");
    }

    #[test]
    fn renders_a_table() {
        let dir = std::env::temp_dir().join(format!("loadgen-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.jsonl");
        let line = |t: &str, rate: f64, busy: f64| {
            format!(
                r#"{{"scenario":"a","title":"A","mode":"throughput","target":"{t}","rate":{rate},"cpu_us_per_op":1.5,"proxy_core_busy":{busy},"has_proxy":true,"errors_total":0}}"#
            )
        };
        let text = [
            line("sluice", 200.0, 0.99),
            line("nginx", 100.0, 0.5),
            line("caddy", 150.0, 0.99),
        ]
        .join("\n");
        std::fs::write(&path, text).unwrap();
        let table = render(&Options {
            results: &path,
            targets: vec!["sluice".into(), "nginx".into(), "caddy".into()],
            subject: "sluice".into(),
            peers: vec!["nginx".into(), "caddy".into()],
            busy_threshold: 0.9,
            noise_threshold: 0.05,
            notes: vec![],
        })
        .unwrap();
        assert!(table.contains(
            "| A: msg/s ↑ | 200 | 100 ⚠ | 150 | 1.33× (vs caddy) | nginx: core 50% busy |"
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_and_skipped_cells_show_a_dash() {
        let dir = std::env::temp_dir().join(format!("loadgen-failed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.jsonl");
        let text = [
            r#"{"scenario":"h2","mode":"h2load","target":"direct","skipped":"HTTP/1.1 only"}"#,
            r#"{"scenario":"h2","title":"H2","mode":"h2load","target":"sluice","rate":null,"errors_total":1,"first_error":"1 × h2load (first: no measured interval)"}"#,
            r#"{"scenario":"h2","title":"H2","mode":"h2load","target":"nginx","rate":900,"cpu_us_per_op":10,"proxy_core_busy":0.99,"has_proxy":true,"errors_total":0}"#,
            // No proxy, so no memory figure, and nothing wrong.
            r#"{"scenario":"idle","title":"I","mode":"idle","target":"direct","kib_per_tunnel":null,"errors_total":0}"#,
        ]
        .join("\n");
        std::fs::write(&path, text).unwrap();
        let table = render(&Options {
            results: &path,
            targets: vec!["direct".into(), "sluice".into(), "nginx".into()],
            subject: "sluice".into(),
            peers: vec!["nginx".into()],
            busy_threshold: 0.9,
            noise_threshold: 0.05,
            notes: vec![],
        })
        .unwrap();
        assert!(
            table.contains("| H2: req/s ↑ | — | — (1 err) | 900 | — | sluice: failed: 1 × h2load (first: no measured interval) |"),
            "{table}"
        );
        assert!(
            table.contains("| H2: proxy CPU µs/req ↓ | — | — | 10.00 | — |  |"),
            "{table}"
        );
        assert!(
            table.contains("| I: proxy KiB/tunnel ↓ | — | not run | not run | — |  |"),
            "{table}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn grpc_rows_are_requests() {
        let dir = std::env::temp_dir().join(format!("loadgen-grpc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.jsonl");
        let text = [
            r#"{"scenario":"grpc","title":"G","mode":"grpc","target":"direct","skipped":"no proxy"}"#,
            r#"{"scenario":"grpc","title":"G","mode":"grpc","target":"sluice","rate":12000,"cpu_us_per_op":40,"proxy_core_busy":0.99,"has_proxy":true,"errors_total":0}"#,
            r#"{"scenario":"grpc","title":"G","mode":"grpc","target":"nginx","rate":8000,"cpu_us_per_op":60,"proxy_core_busy":0.99,"has_proxy":true,"errors_total":0}"#,
        ]
        .join("\n");
        std::fs::write(&path, text).unwrap();
        let table = render(&Options {
            results: &path,
            targets: vec!["direct".into(), "sluice".into(), "nginx".into()],
            subject: "sluice".into(),
            peers: vec!["nginx".into()],
            busy_threshold: 0.9,
            noise_threshold: 0.05,
            notes: vec![],
        })
        .unwrap();
        assert!(
            table.contains("| G: req/s ↑ | — | 12,000 | 8,000 | 1.50× (vs nginx) |  |"),
            "{table}"
        );
        assert!(
            table.contains("| G: proxy CPU µs/req ↓ | — | 40.00 | 60.00 | 0.67× (vs nginx) |  |"),
            "{table}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn idle_has_a_row_after_the_surge() {
        let dir = std::env::temp_dir().join(format!("loadgen-idle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.jsonl");
        let text = [
            r#"{"scenario":"idle","title":"2000 idle tunnels","mode":"idle","target":"direct","params":{"surge_ms":0,"settle_ms":1000},"kib_per_tunnel":null,"kib_per_tunnel_surge":null,"errors_total":0}"#,
            r#"{"scenario":"idle","title":"2000 idle tunnels","mode":"idle","target":"sluice","params":{"surge_ms":0,"settle_ms":1000},"kib_per_tunnel":1.9,"kib_per_tunnel_surge":4.5,"errors_total":0}"#,
            r#"{"scenario":"idle","title":"2000 idle tunnels","mode":"idle","target":"nginx","params":{"surge_ms":0,"settle_ms":1000},"kib_per_tunnel":3.8,"kib_per_tunnel_surge":3.0,"errors_total":0}"#,
        ]
        .join("\n");
        std::fs::write(&path, text).unwrap();
        let table = render(&Options {
            results: &path,
            targets: vec!["direct".into(), "sluice".into(), "nginx".into()],
            subject: "sluice".into(),
            peers: vec!["nginx".into()],
            busy_threshold: 0.9,
            noise_threshold: 0.05,
            notes: vec![],
        })
        .unwrap();
        assert!(
            table.contains(
                "| 2000 idle tunnels: proxy KiB/tunnel ↓ | — | 1.90 | 3.80 | 0.50× (vs nginx) |  |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| 2000 idle tunnels, as the last opened: proxy KiB/tunnel ↓ | — | 4.50 | 3.00 | 1.50× (vs nginx) |  |"),
            "{table}"
        );
        assert_eq!(duration_name(1000.0), "1 s");
        assert_eq!(duration_name(1500.0), "1.5 s");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn references_are_never_the_best_peer() {
        let dir = std::env::temp_dir().join(format!("loadgen-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.jsonl");
        let line = |t: &str, rate: f64| {
            format!(
                r#"{{"scenario":"a","title":"A","mode":"throughput","target":"{t}","rate":{rate},"cpu_us_per_op":{},"proxy_core_busy":0.99,"has_proxy":true,"errors_total":0}}"#,
                100.0 / rate
            )
        };
        // direct, floor and sluice-opaque beat every proxy, yet only nginx and caddy
        // are peers.
        let text = [
            line("direct", 1000.0),
            line("floor", 800.0),
            line("sluice", 200.0),
            line("sluice-opaque", 400.0),
            line("nginx", 100.0),
            line("caddy", 160.0),
        ]
        .join("\n");
        std::fs::write(&path, text).unwrap();
        let targets = [
            "direct",
            "floor",
            "sluice",
            "sluice-opaque",
            "nginx",
            "caddy",
        ];
        let table = render(&Options {
            results: &path,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            subject: "sluice".into(),
            peers: vec!["nginx".into(), "caddy".into()],
            busy_threshold: 0.9,
            noise_threshold: 0.05,
            notes: vec![],
        })
        .unwrap();
        assert!(table.contains("| 1.25× (vs caddy) |"), "{table}");
        assert!(table.contains("| 0.80× (vs caddy) |"), "{table}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cells_are_medians_of_rounds() {
        let dir = std::env::temp_dir().join(format!("loadgen-rounds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.jsonl");
        let line = |t: &str, cpu: f64, busy: f64, errors: u64| {
            format!(
                r#"{{"scenario":"a","title":"A","mode":"throughput","target":"{t}","rate":100,"cpu_us_per_op":{cpu},"proxy_core_busy":{busy},"has_proxy":true,"errors_total":{errors}}}"#
            )
        };
        // sluice's middle round is 2.0 (not the mean, 4.0); nginx's two rounds give the
        // lower one, 3.0, with that round's warning; errors add up over rounds.
        let text = [
            line("sluice", 9.0, 0.99, 1),
            line("nginx", 3.0, 0.5, 0),
            line("sluice", 1.0, 0.99, 0),
            line("nginx", 5.0, 0.99, 0),
            line("sluice", 2.0, 0.99, 2),
        ]
        .join("\n");
        std::fs::write(&path, text).unwrap();
        let table = render(&Options {
            results: &path,
            targets: vec!["sluice".into(), "nginx".into()],
            subject: "sluice".into(),
            peers: vec!["nginx".into()],
            busy_threshold: 0.9,
            noise_threshold: 0.05,
            notes: vec![],
        })
        .unwrap();
        assert!(
            table.contains(
                "| A: msg/s ↑ | 100 (3 err) | 100 ⚠ | 1.00× (vs nginx) | nginx: core 50% busy |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| A: proxy CPU µs/msg ↓ | 2.00 | 3.00 | 0.67× (vs nginx) |  |"),
            "{table}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
