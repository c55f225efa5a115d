//! The scenarios, one module each. Each sets up its accounts and rooms once,
//! then measures `--runs` times.

pub mod initial_sync;
pub mod latency;
pub mod login;
pub mod send;
pub mod sliding_sync;
pub mod to_device;

use crate::{
    meter::Reading,
    results::{Metric, Scenario},
};

/// Adds the server's peak RSS during one measured run and, when the runs do
/// the same work on both servers, its CPU time.
pub fn record(s: &mut Scenario, r: &Reading, cpu_per_run: bool) {
    if let Some(p) = r.start_rss_mib {
        s.metric(Metric::info("RSS when the run starts", "MiB")).push(p);
    }
    if let Some(p) = r.peak_rss_mib {
        s.metric(Metric::new("peak RSS (5 memory)", "MiB", false)).push(p);
    }
    if cpu_per_run && let Some(c) = r.cpu_secs {
        s.metric(Metric::new("server CPU time per run", "s", false)).push(c);
    }
}

/// Milliseconds between two instants.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
