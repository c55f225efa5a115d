//! The server's processes seen from /proc: resident memory (sampled, to catch
//! the peak during a run) and CPU time, summed over the processes when the
//! server runs as several. Also the progress display on stderr.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User plus system CPU time of a process (all its threads), in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here; in USER_HZ (100 on Linux).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Total `VmRSS` of several processes, in KiB; `None` without PIDs or when
/// one of them cannot be read (a partial sum would pass for a fall).
pub fn total_rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| rss_kib(p)).sum()
}

/// Total CPU time of several processes, in seconds; `None` as for [`total_rss_kib`].
pub fn total_cpu_secs(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| cpu_secs(p)).sum()
}

/// Samples the server's processes while a measured run goes on.
pub struct Meter {
    pids: Vec<u32>,
    start_rss: Option<u64>,
    peak: Arc<AtomicU64>,
    cpu_start: Option<f64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What a [`Meter`] saw.
pub struct Reading {
    /// RSS when the run started: what earlier work left behind.
    pub start_rss_mib: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub cpu_secs: Option<f64>,
}

impl Meter {
    /// Starts sampling; the peak is that of the sum of the processes' RSS,
    /// each sample reading every process.
    pub fn start(pids: &[u32]) -> Meter {
        let pids = pids.to_vec();
        let start_rss = total_rss_kib(&pids);
        let peak = Arc::new(AtomicU64::new(start_rss.unwrap_or(0)));
        let task = (!pids.is_empty()).then(|| {
            let (peak, pids) = (peak.clone(), pids.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                // Bounded: a run never lasts a day.
                for _ in 0..(24 * 3600 * 50) {
                    tick.tick().await;
                    if let Some(r) = total_rss_kib(&pids) {
                        peak.fetch_max(r, Ordering::Relaxed);
                    }
                }
            })
        });
        Meter {
            cpu_start: total_cpu_secs(&pids),
            pids,
            start_rss,
            peak,
            task,
        }
    }

    pub fn finish(mut self) -> Reading {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let last = total_rss_kib(&self.pids).unwrap_or(0);
        let peak = self.peak.load(Ordering::Relaxed).max(last);
        Reading {
            start_rss_mib: self.start_rss.map(|k| k as f64 / 1024.0),
            peak_rss_mib: (!self.pids.is_empty()).then_some(peak as f64 / 1024.0),
            cpu_secs: match (self.cpu_start, total_cpu_secs(&self.pids)) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A counter shown on stderr every two seconds while it lives.
pub struct Progress {
    done: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    what: String,
    total: usize,
    started: Instant,
}

impl Progress {
    pub fn new(label: &str, what: &str, total: usize) -> Progress {
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let (l, w) = (label.to_owned(), what.to_owned());
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            for _ in 0..100_000 {
                tick.tick().await;
                eprintln!(
                    "[{l}] {w}: {}/{total} ({:.0} s)",
                    d.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                );
            }
        });
        Progress {
            done,
            task,
            what: format!("[{label}] {what}"),
            total,
            started,
        }
    }

    pub fn inc(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        eprintln!(
            "{}: {}/{} in {:.1} s",
            self.what,
            self.done.load(Ordering::Relaxed),
            self.total,
            self.started.elapsed().as_secs_f64()
        );
    }
}
