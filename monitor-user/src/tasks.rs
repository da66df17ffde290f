//! Monitored tasks: identity, profile, kernel slot and sampling state.

use std::time::{Duration, Instant, SystemTime};

use monitor_common::NetBucket;

use crate::{
    collect::{DiskTotals, KernelTotals, NetTotals, ProcessSample},
    message::{
        self, Details, DiskDetails, NetworkDetails, Source, TaskMetrics, TaskMetricsMessage,
        Traffic,
    },
    profiles::MonitoringProfile,
};

/// Who a task is: the ids that go into every message, and its profile.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub task_id: String,
    pub proplet_id: String,
    pub profile: MonitoringProfile,
}

/// One monitored task and what its next message is computed from.
#[derive(Debug)]
pub struct Task {
    pub spec: TaskSpec,
    /// Index of the task's counters in the kernel.
    pub slot: u32,
    started: Instant,
    seq: u64,
    /// When the previous message was sampled, and the CPU total then.
    previous: (Instant, u64),
}

/// Everything measured about a task at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    pub kernel: KernelTotals,
    pub processes: ProcessSample,
    pub host_memory_bytes: u64,
    pub at: Instant,
    pub wall: SystemTime,
}

impl Task {
    pub fn new(spec: TaskSpec, slot: u32, started: Instant) -> Self {
        Task {
            spec,
            slot,
            started,
            seq: 0,
            previous: (started, 0),
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// The task's next message, with the profile's uncollected figures omitted.
    pub fn next_message(
        &mut self,
        observation: &Observation,
        source: Source,
        is_final: bool,
    ) -> TaskMetricsMessage {
        let profile = &self.spec.profile;
        let (previous_at, previous_cpu_ns) = self.previous;
        let cpu_ns = observation.kernel.cpu_ns;
        let elapsed = observation.at.saturating_duration_since(previous_at);
        self.previous = (observation.at, cpu_ns);
        self.seq += 1;

        let processes = &observation.processes;
        let kernel = &observation.kernel;
        let timestamp = message::rfc3339(observation.wall);
        let metrics = TaskMetrics {
            cpu_percent: profile
                .collect_cpu
                .then(|| message::cpu_percent(cpu_ns.saturating_sub(previous_cpu_ns), elapsed)),
            cpu_time_ns: profile.collect_cpu.then_some(cpu_ns),
            memory_bytes: profile.collect_memory.then_some(processes.memory_bytes),
            memory_percent: profile.collect_memory.then(|| {
                message::percent(
                    processes.memory_bytes as f64,
                    observation.host_memory_bytes as f64,
                )
            }),
            uptime_seconds: uptime(self.started, observation.at).as_secs(),
            thread_count: profile.collect_threads.then_some(processes.threads),
            file_descriptor_count: profile
                .collect_file_descriptors
                .then_some(processes.file_descriptors),
            disk_read_bytes: profile.collect_disk_io.then_some(kernel.disk.read_bytes),
            disk_write_bytes: profile.collect_disk_io.then_some(kernel.disk.write_bytes()),
            network_rx_bytes: profile.collect_network_io.then_some(kernel.net.inet_rx()),
            network_tx_bytes: profile.collect_network_io.then_some(kernel.net.inet_tx()),
            process_count: observation.kernel.live_processes,
            processes_started: Some(observation.kernel.processes_started),
            timestamp: timestamp.clone(),
        };
        let details = Details {
            disk: profile.collect_disk_io.then(|| disk_details(&kernel.disk)),
            network: profile
                .collect_network_io
                .then(|| network_details(&kernel.net)),
        };
        TaskMetricsMessage {
            task_id: self.spec.task_id.clone(),
            proplet_id: self.spec.proplet_id.clone(),
            metrics,
            aggregated: None,
            details,
            timestamp,
            source,
            seq: self.seq,
            is_final,
        }
    }
}

fn disk_details(disk: &DiskTotals) -> DiskDetails {
    DiskDetails {
        page_cache_write_bytes: disk.dirtied_bytes,
        direct_write_bytes: disk.direct_write_bytes,
        submitted_write_bytes: disk.submitted_write_bytes,
        cancelled_write_bytes: disk.cancelled_write_bytes,
    }
}

fn network_details(net: &NetTotals) -> NetworkDetails {
    let traffic = |bucket| {
        let (rx_bytes, tx_bytes) = net.bucket(bucket);
        Traffic { rx_bytes, tx_bytes }
    };
    NetworkDetails {
        tcp: traffic(NetBucket::Tcp),
        udp: traffic(NetBucket::Udp),
        other: traffic(NetBucket::Other),
        unix: traffic(NetBucket::Unix),
    }
}

fn uptime(started: Instant, now: Instant) -> Duration {
    now.saturating_duration_since(started)
}

/// Hands out kernel task slots, reusing freed ones first.
#[derive(Debug)]
pub struct SlotAllocator {
    capacity: u32,
    next_unused: u32,
    freed: Vec<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("all {capacity} task slots are in use; end a task before starting another")]
pub struct SlotsExhausted {
    pub capacity: u32,
}

impl SlotAllocator {
    pub fn new(capacity: u32) -> Self {
        SlotAllocator {
            capacity,
            next_unused: 0,
            freed: Vec::new(),
        }
    }

    pub fn allocate(&mut self) -> Result<u32, SlotsExhausted> {
        if let Some(slot) = self.freed.pop() {
            return Ok(slot);
        }
        if self.next_unused == self.capacity {
            return Err(SlotsExhausted {
                capacity: self.capacity,
            });
        }
        self.next_unused += 1;
        Ok(self.next_unused - 1)
    }

    pub fn free(&mut self, slot: u32) {
        debug_assert!(slot < self.next_unused && !self.freed.contains(&slot));
        self.freed.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::Preset;

    fn task(preset: Preset, started: Instant) -> Task {
        let spec = TaskSpec {
            task_id: "task".into(),
            proplet_id: "proplet".into(),
            profile: preset.profile(),
        };
        Task::new(spec, 3, started)
    }

    fn observation(at: Instant, cpu_ns: u64) -> Observation {
        Observation {
            kernel: KernelTotals {
                cpu_ns,
                live_processes: 2,
                live_threads: 5,
                processes_started: 9,
                disk: DiskTotals {
                    read_bytes: 100,
                    dirtied_bytes: 20,
                    direct_write_bytes: 3,
                    submitted_write_bytes: 7,
                    cancelled_write_bytes: 1,
                },
                net: NetTotals {
                    tx: [1, 2, 4, 1000],
                    rx: [10, 20, 40, 2000],
                },
            },
            processes: ProcessSample {
                memory_bytes: 1 << 30,
                threads: 5,
                file_descriptors: 12,
                processes: 2,
            },
            host_memory_bytes: 4 << 30,
            at,
            wall: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn cpu_percent_covers_the_interval_since_the_previous_message() {
        let t0 = Instant::now();
        let mut task = task(Preset::Intensive, t0);
        let first = task.next_message(
            &observation(t0 + Duration::from_secs(1), 900_000_000),
            Source::Ebpf,
            false,
        );
        assert_eq!(first.seq, 1);
        assert_eq!(first.metrics.cpu_percent, Some(90.0));
        assert_eq!(first.metrics.cpu_time_ns, Some(900_000_000));
        let second = task.next_message(
            &observation(t0 + Duration::from_millis(1500), 1_900_000_000),
            Source::Ebpf,
            true,
        );
        assert_eq!(second.seq, 2);
        assert!(second.is_final);
        assert_eq!(second.metrics.cpu_percent, Some(200.0));
        assert_eq!(second.metrics.uptime_seconds, 1);
        assert_eq!(second.metrics.memory_percent, Some(25.0));
        assert_eq!(second.metrics.process_count, 2);
        assert_eq!(second.metrics.processes_started, Some(9));
    }

    #[test]
    fn disk_and_network_totals_follow_proc_io_and_exclude_unix() {
        let t0 = Instant::now();
        let mut task = task(Preset::Intensive, t0);
        let message = task.next_message(&observation(t0, 0), Source::Ebpf, false);
        assert_eq!(message.metrics.disk_read_bytes, Some(100));
        assert_eq!(message.metrics.disk_write_bytes, Some(23));
        assert_eq!(message.metrics.network_tx_bytes, Some(7));
        assert_eq!(message.metrics.network_rx_bytes, Some(70));
        let network = message.details.network.unwrap();
        assert_eq!(network.unix.tx_bytes, 1000);
        assert_eq!(network.other.rx_bytes, 40);
        let disk = message.details.disk.unwrap();
        assert_eq!(disk.cancelled_write_bytes, 1);
        assert_eq!(disk.submitted_write_bytes, 7);
    }

    #[test]
    fn profiles_without_disk_or_network_omit_them_and_their_details() {
        let t0 = Instant::now();
        let mut task = task(Preset::RealTimeApi, t0);
        let message = task.next_message(&observation(t0, 0), Source::Ebpf, false);
        assert_eq!(message.metrics.disk_read_bytes, None);
        assert!(message.details.disk.is_none());
        assert!(message.details.network.is_some());
        let mut task = self::task(Preset::Minimal, t0);
        let json =
            serde_json::to_value(task.next_message(&observation(t0, 0), Source::Ebpf, false))
                .unwrap();
        assert!(json.get("details").is_none(), "{json}");
        assert!(json["metrics"].get("network_rx_bytes").is_none());
    }

    #[test]
    fn uncollected_figures_are_omitted() {
        let t0 = Instant::now();
        let mut task = task(Preset::Minimal, t0);
        let message = task.next_message(&observation(t0, 1), Source::Ebpf, false);
        assert!(message.metrics.cpu_time_ns.is_some());
        assert!(message.metrics.memory_bytes.is_some());
        assert_eq!(message.metrics.thread_count, None);
        assert_eq!(message.metrics.file_descriptor_count, None);
        let json = serde_json::to_string(&message).unwrap();
        assert!(!json.contains("thread_count"), "{json}");
    }

    #[test]
    fn slots_are_reused_and_bounded() {
        let mut slots = SlotAllocator::new(2);
        assert_eq!(slots.allocate(), Ok(0));
        assert_eq!(slots.allocate(), Ok(1));
        assert_eq!(slots.allocate(), Err(SlotsExhausted { capacity: 2 }));
        slots.free(0);
        assert_eq!(slots.allocate(), Ok(0));
    }
}
