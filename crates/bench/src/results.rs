//! Results: figures per run, their median and spread, the JSON file, the
//! human table and the side-by-side Markdown comparison.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One figure, measured once per run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub unit: String,
    pub higher_is_better: bool,
    /// Whether a ratio between two servers means something for this figure.
    #[serde(default = "yes")]
    pub compare: bool,
    pub runs: Vec<f64>,
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

fn yes() -> bool {
    true
}

impl Metric {
    pub fn new(name: &str, unit: &str, higher_is_better: bool) -> Metric {
        Metric {
            name: name.into(),
            unit: unit.into(),
            higher_is_better,
            compare: true,
            runs: vec![],
            median: None,
            min: None,
            max: None,
        }
    }

    pub fn info(name: &str, unit: &str) -> Metric {
        Metric {
            compare: false,
            ..Metric::new(name, unit, false)
        }
    }

    pub fn push(&mut self, v: f64) {
        if v.is_finite() {
            self.runs.push(v);
        }
        self.median = median(&self.runs);
        self.min = self.runs.iter().copied().reduce(f64::min);
        self.max = self.runs.iter().copied().reduce(f64::max);
    }

    /// `median (min–max)` with the unit.
    pub fn cell(&self) -> String {
        match (self.median, self.min, self.max) {
            (Some(m), Some(lo), Some(hi)) if self.runs.len() > 1 => {
                format!("{} ({}–{}) {}", fmt(m), fmt(lo), fmt(hi), self.unit)
            }
            (Some(m), ..) => format!("{} {}", fmt(m), self.unit),
            _ => "–".into(),
        }
    }
}

/// Rounds to three significant figures or so, for tables.
pub fn fmt(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// The `q`-quantile (0..=1) of samples, nearest-rank.
pub fn quantile(samples: &mut [f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    Some(samples[rank - 1])
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scenario {
    /// Short identifier (`send`, `latency`, …).
    pub id: String,
    pub title: String,
    /// The sizes used.
    pub params: Value,
    pub metrics: Vec<Metric>,
    /// Why the scenario did not run, if it did not.
    pub skipped: Option<String>,
    /// The error that ended the scenario, if one did (its figures are then lost).
    #[serde(default)]
    pub failed: Option<String>,
    pub notes: Vec<String>,
    /// Failed requests during the measured runs.
    pub errors: u64,
    /// Requests answered 429 during the whole scenario.
    pub rate_limited: u64,
    /// Wall time of the set-up (accounts, rooms, history), in seconds.
    pub setup_secs: f64,
}

/// Figures about the server process (memory, CPU) come after the scenario's own.
fn ordered(metrics: &[Metric]) -> Vec<&Metric> {
    let mut v: Vec<&Metric> = metrics.iter().collect();
    v.sort_by_key(|m| m.name.contains("RSS") || m.name.contains("CPU"));
    v
}

impl Scenario {
    pub fn new(id: &str, title: &str, params: Value) -> Scenario {
        Scenario {
            id: id.into(),
            title: title.into(),
            params,
            metrics: vec![],
            skipped: None,
            failed: None,
            notes: vec![],
            errors: 0,
            rate_limited: 0,
            setup_secs: 0.0,
        }
    }

    /// The metric of that name, created on first use.
    pub fn metric(&mut self, m: Metric) -> &mut Metric {
        let i = match self.metrics.iter().position(|x| x.name == m.name) {
            Some(i) => i,
            None => {
                self.metrics.push(m);
                self.metrics.len() - 1
            }
        };
        &mut self.metrics[i]
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    pub label: String,
    pub url: String,
    /// `/_matrix/client/versions` as the server answered it.
    pub versions: Value,
    /// The first of `pids`.
    pub pid: Option<u32>,
    /// Every process of the server (memory and CPU figures are their sums).
    #[serde(default)]
    pub pids: Vec<u32>,
    pub runs: usize,
    pub idle_rss_kib: Option<u64>,
    pub started_unix: u64,
    pub duration_secs: f64,
    pub args: Value,
    pub scenarios: Vec<Scenario>,
}

/// The human table for one server.
pub fn table(r: &BenchResult) -> String {
    let mut rows: Vec<[String; 3]> = vec![];
    if let Some(idle) = r.idle_rss_kib {
        rows.push([
            "memory".into(),
            "idle RSS after start".into(),
            format!("{} MiB", fmt(idle as f64 / 1024.0)),
        ]);
    }
    for s in &r.scenarios {
        if let Some(why) = &s.skipped {
            rows.push([s.id.clone(), "skipped".into(), why.clone()]);
            continue;
        }
        if let Some(why) = &s.failed {
            rows.push([s.id.clone(), "FAILED".into(), why.clone()]);
            continue;
        }
        for m in ordered(&s.metrics) {
            rows.push([s.id.clone(), m.name.clone(), m.cell()]);
        }
        if s.errors > 0 || s.rate_limited > 0 {
            rows.push([
                s.id.clone(),
                "failed requests".into(),
                format!("{} ({} rate-limited)", s.errors, s.rate_limited),
            ]);
        }
    }
    let w0 = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0).max(8);
    let w1 = rows.iter().map(|r| r[1].chars().count()).max().unwrap_or(0).max(6);
    let mut out = format!("{} at {} — median (min–max) of {} runs\n", r.label, r.url, r.runs);
    out.push_str(&format!("{:w0$}  {:w1$}  value\n", "scenario", "metric"));
    for [a, b, c] in rows {
        out.push_str(&format!("{a:w0$}  {b:w1$}  {c}\n"));
    }
    out
}

/// How many times better `a` is than `b` on this metric (> 1: `a` is ahead).
fn advantage(m: &Metric, a: f64, b: f64) -> Option<f64> {
    if a <= 0.0 || b <= 0.0 {
        return None;
    }
    Some(if m.higher_is_better { a / b } else { b / a })
}

fn ratio_cell(m: &Metric, a: Option<&Metric>, b: Option<&Metric>, a_label: &str, b_label: &str) -> String {
    let (Some(a), Some(b)) = (a.and_then(|x| x.median), b.and_then(|x| x.median)) else {
        return "–".into();
    };
    if !m.compare {
        return "–".into();
    }
    match advantage(m, a, b) {
        Some(x) if x >= 1.0 => format!("**{}× {a_label}**", fmt(x)),
        Some(x) => format!("{}× {b_label}", fmt(1.0 / x)),
        None if a == b => "=".into(),
        None => "–".into(),
    }
}

/// What a result's column shows for a scenario without figures, if so.
fn status_cell(s: Option<&Scenario>) -> Option<String> {
    match s {
        None => Some("–".into()),
        Some(s) if s.failed.is_some() => Some("failed (see notes)".into()),
        Some(s) if s.skipped.is_some() => Some("skipped (see notes)".into()),
        Some(_) => None,
    }
}

/// The side-by-side Markdown table of several runs: one column per result,
/// then one "ahead, by" column per pair `(i, j)` of positions in `rs`.
pub fn compare_markdown(rs: &[&BenchResult], pairs: &[(usize, usize)]) -> String {
    let mut out = "| scenario | figure |".to_owned();
    for r in rs {
        out.push_str(&format!(" {} |", r.label));
    }
    for &(i, j) in pairs {
        if rs.len() == 2 && pairs.len() == 1 {
            out.push_str(" ahead, by |");
        } else {
            out.push_str(&format!(" {} vs {} |", rs[i].label, rs[j].label));
        }
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---:|".repeat(rs.len()));
    out.push_str(&"---|".repeat(pairs.len()));
    out.push('\n');
    let row = |out: &mut String, title: &str, figure: &str, cells: Vec<String>, ratios: Vec<String>| {
        out.push_str(&format!("| {title} | {figure} |"));
        for c in cells.iter().chain(&ratios) {
            out.push_str(&format!(" {c} |"));
        }
        out.push('\n');
    };

    let idle: Vec<Option<Metric>> = rs
        .iter()
        .map(|r| {
            r.idle_rss_kib.map(|k| {
                let mut m = Metric::new("idle RSS", "MiB", false);
                m.push(k as f64 / 1024.0);
                m
            })
        })
        .collect();
    let ratios = |ms: &[Option<&Metric>]| -> Vec<String> {
        pairs
            .iter()
            .map(|&(i, j)| match ms[i].or(ms[j]) {
                Some(m) => ratio_cell(m, ms[i], ms[j], &rs[i].label, &rs[j].label),
                None => "–".into(),
            })
            .collect()
    };
    let idle_refs: Vec<Option<&Metric>> = idle.iter().map(Option::as_ref).collect();
    row(
        &mut out,
        "5 memory",
        "idle RSS after start",
        idle_refs.iter().map(|m| m.map_or("–".into(), Metric::cell)).collect(),
        ratios(&idle_refs),
    );

    // Scenarios in the order of the first result that has them.
    let mut ids: Vec<&str> = vec![];
    for r in rs {
        for s in &r.scenarios {
            if !ids.contains(&s.id.as_str()) {
                ids.push(&s.id);
            }
        }
    }
    for id in ids {
        let ss: Vec<Option<&Scenario>> = rs.iter().map(|r| r.scenarios.iter().find(|s| s.id == id)).collect();
        let title = ss.iter().flatten().next().map_or(id, |s| s.title.as_str());
        // Every figure any result has, the server's memory and CPU last.
        let mut names: Vec<&Metric> = vec![];
        for s in ss.iter().flatten().filter(|s| status_cell(Some(s)).is_none()) {
            for m in ordered(&s.metrics) {
                if !names.iter().any(|x| x.name == m.name) {
                    names.push(m);
                }
            }
        }
        names.sort_by_key(|m| m.name.contains("RSS") || m.name.contains("CPU"));
        if names.is_empty() {
            let cells = ss.iter().map(|s| status_cell(*s).unwrap_or("–".into())).collect();
            row(&mut out, title, "–", cells, vec!["–".into(); pairs.len()]);
            continue;
        }
        for m in names {
            let found: Vec<Option<&Metric>> = ss
                .iter()
                .map(|s| {
                    s.filter(|s| status_cell(Some(s)).is_none())
                        .and_then(|s| s.metrics.iter().find(|x| x.name == m.name))
                })
                .collect();
            let cells = ss
                .iter()
                .zip(&found)
                .map(|(s, f)| status_cell(*s).unwrap_or_else(|| f.map_or("–".into(), Metric::cell)))
                .collect();
            row(&mut out, title, &m.name, cells, ratios(&found));
        }
    }
    out
}

/// Scenario parameters and anomalies of the runs, as Markdown bullet lines;
/// a note several results share is written once, with their labels (none
/// when every result has it).
pub fn notes_markdown(results: &[&BenchResult]) -> String {
    // (scenario title, note) → labels, in order of first appearance.
    let mut notes: Vec<(String, String, Vec<&str>)> = vec![];
    for r in results {
        for s in &r.scenarios {
            let mut lines = vec![];
            if s.errors > 0 || s.rate_limited > 0 {
                lines.push(format!(
                    "{} failed requests in the measured runs, {} answered 429 (rate-limited)",
                    s.errors, s.rate_limited
                ));
            }
            if let Some(why) = &s.failed {
                lines.push(format!("failed, {why}"));
            }
            if let Some(why) = &s.skipped {
                lines.push(format!("skipped, {why}"));
            }
            lines.extend(s.notes.iter().cloned());
            for n in lines {
                match notes.iter_mut().find(|(t, x, _)| *t == s.title && *x == n) {
                    Some((.., labels)) => labels.push(&r.label),
                    None => notes.push((s.title.clone(), n, vec![&r.label])),
                }
            }
        }
    }
    let mut out = String::new();
    for (title, n, labels) in notes {
        if labels.len() == results.len() && labels.len() > 1 {
            out.push_str(&format!("- {title}: {n}\n"));
        } else {
            out.push_str(&format!("- {} / {title}: {n}\n", labels.join(", ")));
        }
    }
    out
}
