//! The agent's own metrics: the proplet-level message of Propeller
//! (`control/proplet/metrics`), plus the host's CPU use.

use std::time::{Duration, Instant, SystemTime};

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::message::{
    self, CpuMetrics, KernelHealth, MemoryMetrics, PropletMetricsMessage, Source,
};

pub struct PropletReporter {
    proplet_id: String,
    namespace: String,
    system: Option<System>,
    /// When the previous message was made, and the agent's CPU seconds then.
    previous: (Instant, f64),
}

impl PropletReporter {
    pub fn new(proplet_id: String, namespace: String) -> Self {
        let mut system = System::new().ok();
        if let Some(system) = system.as_mut() {
            // The first reading is the baseline of the next one.
            system.refresh_cpu_usage();
        }
        PropletReporter {
            proplet_id,
            namespace,
            system,
            previous: (Instant::now(), 0.0),
        }
    }

    pub fn sample(
        &mut self,
        task_count: usize,
        dropped: u64,
        source: Source,
        kernel: Option<KernelHealth>,
    ) -> PropletMetricsMessage {
        let (user, system_seconds) = self.own_cpu_seconds();
        let now = Instant::now();
        let (previous_at, previous_cpu) = self.previous;
        let used = (user + system_seconds - previous_cpu).max(0.0);
        let percent = message::cpu_percent(
            (used * 1e9) as u64,
            now.saturating_duration_since(previous_at),
        );
        self.previous = (now, user + system_seconds);
        PropletMetricsMessage {
            proplet_id: self.proplet_id.clone(),
            namespace: self.namespace.clone(),
            timestamp: message::rfc3339(SystemTime::now()),
            cpu_metrics: CpuMetrics {
                user_seconds: round_micros(user),
                system_seconds: round_micros(system_seconds),
                percent,
            },
            memory_metrics: MemoryMetrics {
                rss_bytes: self.own_rss_bytes(),
                ..MemoryMetrics::default()
            },
            host_cpu_percent: self.host_cpu_percent(),
            task_count: task_count as u64,
            dropped_messages: dropped,
            source,
            kernel: kernel.map(Box::new),
        }
    }

    /// User and system CPU seconds of the agent since it started.
    #[cfg(unix)]
    fn own_cpu_seconds(&mut self) -> (f64, f64) {
        own_cpu_seconds()
    }

    #[cfg(not(unix))]
    fn own_cpu_seconds(&mut self) -> (f64, f64) {
        let total_ms = self.own_process(|p| p.accumulated_cpu_time()).unwrap_or(0);
        (total_ms as f64 / 1000.0, 0.0)
    }

    fn own_rss_bytes(&mut self) -> u64 {
        #[cfg(target_os = "linux")]
        {
            crate::collect::procfs::own_rss_bytes()
        }
        #[cfg(not(target_os = "linux"))]
        {
            self.own_process(|p| p.memory()).unwrap_or(0)
        }
    }

    #[cfg_attr(target_os = "linux", allow(dead_code))]
    fn own_process<T>(&mut self, read: impl Fn(&sysinfo::Process) -> T) -> Option<T> {
        let system = self.system.as_mut()?;
        let pid = Pid::from_u32(std::process::id());
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        system.process(pid).map(read)
    }

    /// CPU use of the whole host since the previous sample, 100 = all cores.
    fn host_cpu_percent(&mut self) -> f64 {
        let Some(system) = self.system.as_mut() else {
            return 0.0;
        };
        system.refresh_cpu_usage();
        (f64::from(system.global_cpu_usage()) * 100.0).round() / 100.0
    }
}

/// User and system CPU seconds of the agent (all its threads) since it
/// started.
#[cfg(unix)]
pub fn own_cpu_seconds() -> (f64, f64) {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return (0.0, 0.0);
    };
    let seconds = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    (seconds(usage.user_time()), seconds(usage.system_time()))
}

fn round_micros(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e6
}

/// Shortest time between proplet-level messages.
pub const MIN_METRICS_INTERVAL: Duration = Duration::from_secs(1);
/// Longest time between proplet-level messages (one day); a larger value
/// is a typo, and would overflow the clock when added to it.
pub const MAX_METRICS_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Parses `PROPLET_METRICS_INTERVAL`: seconds (`30`), or a Go-style
/// duration (`30s`, `1m`), from 1 s to 24 h.
pub fn parse_metrics_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let interval = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text)
            .map_err(|err| format!("invalid interval {text:?}: {err} (examples: 30, 30s, 1m)"))?,
    };
    if !(MIN_METRICS_INTERVAL..=MAX_METRICS_INTERVAL).contains(&interval) {
        return Err(format!(
            "interval {text:?} is out of range: it must be between 1s and 24h"
        ));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_interval_takes_seconds_or_durations() {
        assert_eq!(parse_metrics_interval("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_metrics_interval("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_metrics_interval("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_metrics_interval("0").is_err());
        assert_eq!(parse_metrics_interval("86400"), Ok(MAX_METRICS_INTERVAL));
        // Issue 10: this used to overflow the clock and panic.
        for absurd in ["9223372036854775807", "86401", "25h", "500ms"] {
            let err = parse_metrics_interval(absurd).unwrap_err();
            assert!(err.contains("between 1s and 24h"), "{absurd}: {err}");
        }
        assert!(parse_metrics_interval("soon").unwrap_err().contains("soon"));
    }

    #[test]
    fn reports_own_cpu_and_memory() {
        let mut reporter = PropletReporter::new("p".into(), "default".into());
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        let message = reporter.sample(3, 0, Source::Ebpf, Some(KernelHealth::default()));
        assert!(message.cpu_metrics.user_seconds + message.cpu_metrics.system_seconds > 0.0);
        assert!(message.memory_metrics.rss_bytes > 1 << 20);
        assert_eq!(message.task_count, 3);
        assert_eq!(message.namespace, "default");
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["kernel"]["storage_failures"], 0, "{json}");
        assert_eq!(json["kernel"]["event_drops"], 0, "{json}");
    }
}
