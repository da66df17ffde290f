//! The messages propmon emits, field for field.
//!
//! The per-task message is Propeller's task metrics message (the Manager
//! reads `task_id`, `proplet_id`, the top-level RFC 3339 `timestamp` and the
//! numeric fields of `metrics` and `aggregated` by these names) plus our own
//! fields: `source`, `seq`, `final`, `cpu_time_ns`, `process_count`,
//! `processes_started`. A figure that was not collected is omitted, never
//! sent as a made-up 0.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Where the figures of a message come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Counted in the kernel by propmon's eBPF programs.
    Ebpf,
    /// Sampled from the operating system by the `sysinfo` crate.
    Sysinfo,
}

/// Per-task metrics message (`control/proplet/task_metrics`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskMetricsMessage {
    pub task_id: String,
    pub proplet_id: String,
    pub metrics: TaskMetrics,
    /// Aggregates over the retained history; `null` without history.
    pub aggregated: Option<Aggregated>,
    /// Breakdowns for debugging, beyond Propeller's fields.
    #[serde(default, skip_serializing_if = "Details::is_empty")]
    pub details: Details,
    /// RFC 3339, UTC, millisecond precision: when the sample was taken.
    pub timestamp: String,
    pub source: Source,
    /// 1 for the first message of a task, then +1 per message.
    pub seq: u64,
    /// `true` on the last message of a task, which carries its final totals.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Why the task ended (final messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
    /// How the figures were attributed when not to the task's own processes
    /// (`"proplet-process"`: the task runs inside the proplet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskMetrics {
    /// CPU used over the last interval, 100 = one core fully busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Cumulative on-CPU ns of the task and all its descendants, exited ones included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ns: Option<u64>,
    /// Resident memory summed over the task's live processes, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// `memory_bytes` as a percentage of the host's RAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_read_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_write_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_rx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_tx_bytes: Option<u64>,
    /// Whole seconds since the task started.
    pub uptime_seconds: u64,
    /// Threads summed over the task's live processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_count: Option<u64>,
    /// Open file descriptors summed over the task's live processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_descriptor_count: Option<u64>,
    /// Live processes of the task.
    pub process_count: u64,
    /// Processes that ever belonged to the task (the root counts), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes_started: Option<u64>,
    /// Tasks defined by a cgroup: its `memory.current` (bytes charged to
    /// the cgroup, page cache included), where the file exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_usage_bytes: Option<u64>,
    /// Tasks defined by a cgroup: its `memory.max`, unless there is none
    /// (the file says `max`, or does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_limit_bytes: Option<u64>,
    /// Same as the top-level `timestamp`.
    pub timestamp: String,
}

/// Breakdowns of the disk and network totals; each is present when its
/// figures are collected.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Details {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkDetails>,
}

impl Details {
    pub fn is_empty(&self) -> bool {
        self.disk.is_none() && self.network.is_none()
    }
}

/// The rest of `/proc/<pid>/io`, summed over the task (cumulative; the
/// names are the kernel's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskDetails {
    /// Dirty page-cache bytes dropped (truncated) before writeback.
    pub cancelled_write_bytes: u64,
    /// Bytes passed to read-like system calls, page-cache hits included.
    pub rchar: u64,
    /// Bytes passed to write-like system calls.
    pub wchar: u64,
    /// Read-like system calls.
    pub syscr: u64,
    /// Write-like system calls.
    pub syscw: u64,
}

/// Why a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// Its last process exited (and its threads were released).
    Exited,
    /// The Propeller Manager stopped it; its processes are no longer
    /// counted, even if they run on.
    Stopped,
    /// No process exec'd its module within the discovery timeout.
    NotFound,
    /// The agent stopped for good (without keeping state).
    AgentStopped,
    /// `propmon run` stopped tracking a command that outlived its signal.
    Abandoned,
}

/// Socket payload bytes by protocol (cumulative), with the busiest peers
/// and TCP's health when the backend can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDetails {
    pub tcp: TcpTraffic,
    pub udp: Traffic,
    /// Other AF_INET/AF_INET6 protocols (ICMP, SCTP, raw...).
    pub other: Traffic,
    /// AF_UNIX sockets: never in `network_*`, they do not leave the host.
    pub unix: Traffic,
    /// The busiest remote endpoints by bytes, then one `"peer":"other"`
    /// entry for the rest: their bytes add up exactly to `network_*_bytes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
}

/// TCP payload, and how TCP fared (cumulative; health figures only where
/// the backend counts them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpTraffic {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Segments retransmitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u64>,
    /// Connection attempts that failed: refused, timed out or reset
    /// before they were established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_connections: Option<u64>,
    /// Connections reset by the peer after they were established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_received: Option<u64>,
}

impl TcpTraffic {
    /// The payload figures alone.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
        }
    }
}

/// One remote endpoint of a task's sockets (cumulative figures).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// `ADDRESS:PORT` (`[ADDRESS]:PORT` for IPv6); `"unconnected"` for
    /// sockets without a single peer (unconnected UDP); `"other"` for
    /// every peer beyond the busiest ones.
    pub peer: String,
    /// `tcp`, `udp` or `other`; absent for the `other` entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    /// `connections_opened - connections_closed`.
    pub connections_open: u64,
    /// TCP segments retransmitted to this peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Aggregates over a task's retained history (Propeller's field names;
/// computed as documented in `history`). Uncollected figures are omitted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregated {
    /// Mean `cpu_percent` of the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_cpu_usage: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_usage: Option<f64>,
    /// Mean `memory_bytes` of the window, rounded to a whole byte (an
    /// integer: Propeller's Go type is `uint64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_memory_usage: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_usage: Option<u64>,
    /// Bytes moved during the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_disk_read: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_disk_write: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_network_rx: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_network_tx: Option<u64>,
    pub sample_count: u64,
}

/// Proplet-level message (`control/proplet/metrics`): the agent itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PropletMetricsMessage {
    pub proplet_id: String,
    pub namespace: String,
    pub timestamp: String,
    pub cpu_metrics: CpuMetrics,
    pub memory_metrics: MemoryMetrics,
    /// CPU use of the whole host over the interval, 100 = all cores busy.
    pub host_cpu_percent: f64,
    /// Tasks being monitored.
    pub task_count: u64,
    /// Messages dropped because the export queue was full, since start.
    pub dropped_messages: u64,
    pub source: Source,
    /// The kernel side's losses since its maps were made (eBPF only).
    /// Boxed: the message travels in an enum with small variants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Box<KernelHealth>>,
}

/// What the kernel programs could not do, counted since their maps were
/// made (`monitor_common::KernelStats`): each is also logged, at most one
/// line a minute per kind. All 0 on a healthy node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelHealth {
    /// Threads that could not be given their task (out of memory): their
    /// figures are missing.
    pub storage_failures: u64,
    /// Events to the agent lost (ring buffer full).
    pub event_drops: u64,
    /// Execs whose argv could not be searched for a task's module.
    pub argv_read_failures: u64,
    /// Module execs before their start message with no provisional slot left.
    pub provisional_exhausted: u64,
    /// Module execs refused: not descendants of the proplet.
    pub lineage_refused: u64,
    /// Provisional roots the discovery map had no room for.
    pub discovery_map_full: u64,
    /// Threads that could not follow their process to another cgroup.
    pub move_failures: u64,
    /// Passes that found the kernel's structs not where BTF says.
    pub layout_mismatches: u64,
    /// New peers that found every peer row taken: counted in their task's
    /// `other` peer.
    pub peer_rows_exhausted: u64,
}

impl From<monitor_common::KernelStats> for KernelHealth {
    fn from(stats: monitor_common::KernelStats) -> Self {
        KernelHealth {
            storage_failures: stats.storage_failures,
            event_drops: stats.event_drops,
            argv_read_failures: stats.argv_read_failures,
            provisional_exhausted: stats.provisional_exhausted,
            lineage_refused: stats.lineage_refused,
            discovery_map_full: stats.discovery_map_full,
            move_failures: stats.move_failures,
            layout_mismatches: stats.layout_mismatches,
            peer_rows_exhausted: stats.peer_rows_exhausted,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuMetrics {
    /// CPU time of the agent since it started, seconds.
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// The agent's CPU over the interval, 100 = one core.
    pub percent: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryMetrics {
    pub rss_bytes: u64,
    /// Go runtime figures in Propeller's Go proplet; always 0 here.
    pub heap_alloc_bytes: u64,
    pub heap_sys_bytes: u64,
    pub heap_inuse_bytes: u64,
}

/// RFC 3339 in UTC with milliseconds, e.g. `2025-01-15T10:30:00.000Z`.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// CPU share over a wall-clock interval, 100 = one core; rounded to 0.01.
pub fn cpu_percent(cpu_ns: u64, wall: Duration) -> f64 {
    percent(cpu_ns as f64, wall.as_nanos() as f64)
}

/// `part` as a percentage of `whole`, rounded to 0.01; 0 when `whole` is 0.
pub fn percent(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 {
        return 0.0;
    }
    (part / whole * 10_000.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_relative_to_one_core() {
        let second = Duration::from_secs(1);
        assert_eq!(cpu_percent(1_000_000_000, second), 100.0);
        assert_eq!(cpu_percent(2_000_000_000, second), 200.0);
        assert_eq!(cpu_percent(425_000_000, second), 42.5);
        assert_eq!(cpu_percent(1, Duration::from_secs(3)), 0.0);
        assert_eq!(cpu_percent(500_000_000, Duration::from_millis(500)), 100.0);
        assert_eq!(cpu_percent(123, Duration::ZERO), 0.0);
    }

    #[test]
    fn percent_rounds_to_hundredths() {
        assert_eq!(percent(1.0, 3.0), 33.33);
        assert_eq!(percent(2.0, 3.0), 66.67);
        assert_eq!(
            percent(64.0 * 1024.0 * 1024.0, 4096.0 * 1024.0 * 1024.0),
            1.56
        );
    }

    #[test]
    fn timestamp_is_rfc3339_utc_millis() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_736_937_000_123);
        assert_eq!(rfc3339(t), "2025-01-15T10:30:00.123Z");
    }

    fn sample_message() -> TaskMetricsMessage {
        TaskMetricsMessage {
            task_id: "t1".into(),
            proplet_id: "p1".into(),
            metrics: TaskMetrics {
                cpu_percent: Some(42.5),
                cpu_time_ns: Some(425_000_000),
                memory_bytes: Some(67_108_864),
                memory_percent: Some(1.5),
                uptime_seconds: 120,
                thread_count: Some(4),
                file_descriptor_count: Some(12),
                process_count: 2,
                processes_started: Some(3),
                timestamp: "2025-01-15T10:30:00.000Z".into(),
                ..Default::default()
            },
            aggregated: None,
            details: Details::default(),
            timestamp: "2025-01-15T10:30:00.000Z".into(),
            source: Source::Ebpf,
            seq: 7,
            is_final: false,
            end_reason: None,
            attribution: None,
        }
    }

    #[test]
    fn serialises_with_propeller_names_and_omits_uncollected_figures() {
        let json = serde_json::to_value(sample_message()).unwrap();
        let expected = serde_json::json!({
            "task_id": "t1",
            "proplet_id": "p1",
            "metrics": {
                "cpu_percent": 42.5,
                "cpu_time_ns": 425_000_000u64,
                "memory_bytes": 67_108_864u64,
                "memory_percent": 1.5,
                "uptime_seconds": 120,
                "thread_count": 4,
                "file_descriptor_count": 12,
                "process_count": 2,
                "processes_started": 3,
                "timestamp": "2025-01-15T10:30:00.000Z"
            },
            "aggregated": null,
            "timestamp": "2025-01-15T10:30:00.000Z",
            "source": "ebpf",
            "seq": 7,
            "final": false
        });
        assert_eq!(json, expected);
    }

    #[test]
    fn details_appear_only_when_collected() {
        let mut message = sample_message();
        message.details.network = Some(NetworkDetails {
            tcp: TcpTraffic {
                rx_bytes: 1,
                tx_bytes: 2,
                ..TcpTraffic::default()
            },
            ..Default::default()
        });
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["details"]["network"]["tcp"]["tx_bytes"], 2);
        assert_eq!(json["details"]["network"]["unix"]["rx_bytes"], 0);
        assert!(json["details"].get("disk").is_none());
    }

    /// Propeller's Go types, field for field (`pkg/proplet/metrics.go`; see
    /// `propeller-interop.md`). Decoding into them is as strict as Go's
    /// `encoding/json` with those types: a fraction where an integer is
    /// declared, or a value out of the declared range, is an error. Missing
    /// fields take Go's zero values and unknown ones are ignored, as in Go.
    mod propeller_go {
        use serde::Deserialize;

        #[derive(Debug, Default, Deserialize)]
        #[serde(default)]
        pub struct TaskMetrics {
            pub task_id: String,
            pub proplet_id: String,
            pub metrics: ProcessMetrics,
            pub aggregated: Option<AggregatedMetrics>,
            pub timestamp: String,
        }

        #[derive(Debug, Default, Deserialize)]
        #[serde(default)]
        pub struct ProcessMetrics {
            pub cpu_percent: f64,
            pub memory_bytes: u64,
            pub memory_percent: f32,
            pub disk_read_bytes: u64,
            pub disk_write_bytes: u64,
            pub network_rx_bytes: u64,
            pub network_tx_bytes: u64,
            pub uptime_seconds: i64,
            pub thread_count: i32,
            pub file_descriptor_count: i32,
        }

        #[derive(Debug, Default, Deserialize)]
        #[serde(default)]
        pub struct AggregatedMetrics {
            pub avg_cpu_usage: f64,
            pub max_cpu_usage: f64,
            pub avg_memory_usage: u64,
            pub max_memory_usage: u64,
            pub total_disk_read: u64,
            pub total_disk_write: u64,
            pub total_network_rx: u64,
            pub total_network_tx: u64,
            /// Go `int`: 64 bits.
            pub sample_count: i64,
        }

        #[derive(Debug, Default, Deserialize)]
        #[serde(default)]
        pub struct PropletMetrics {
            pub proplet_id: String,
            pub namespace: String,
            pub timestamp: String,
            pub cpu_metrics: CpuMetrics,
            pub memory_metrics: MemoryMetrics,
        }

        #[derive(Debug, Default, Deserialize)]
        #[serde(default)]
        pub struct CpuMetrics {
            pub user_seconds: f64,
            pub system_seconds: f64,
            pub percent: f64,
        }

        #[derive(Debug, Default, Deserialize)]
        #[serde(default)]
        pub struct MemoryMetrics {
            pub rss_bytes: u64,
            pub heap_alloc_bytes: u64,
            pub heap_sys_bytes: u64,
            pub heap_inuse_bytes: u64,
            pub container_usage_bytes: Option<u64>,
            pub container_limit_bytes: Option<u64>,
        }
    }

    /// A message with every figure and aggregates whose means are not whole.
    fn full_message_with_aggregates() -> TaskMetricsMessage {
        use crate::history::{History, Sample};
        let mut history = History::new(10);
        for (cpu, memory) in [(10.0, 13_907_057), (33.3, 13_907_058), (41.7, 13_907_058)] {
            history.push(Sample {
                cpu_percent: Some(cpu),
                memory_bytes: Some(memory),
                disk_read: Some(4096),
                disk_write: Some(8192),
                network_rx: Some(100),
                network_tx: Some(200),
            });
        }
        let mut message = sample_message();
        message.metrics.disk_read_bytes = Some(12_288);
        message.metrics.disk_write_bytes = Some(24_576);
        message.metrics.network_rx_bytes = Some(300);
        message.metrics.network_tx_bytes = Some(600);
        message.metrics.memory_percent = Some(percent(13_907_058.0, 4e9));
        message.aggregated = history.aggregate();
        message
    }

    /// Issue 10, item 13: a strict decoder with Propeller's Go types takes
    /// the per-task message (aggregates included) and the proplet-level one.
    #[test]
    fn messages_decode_strictly_into_propellers_go_types() {
        let message = full_message_with_aggregates();
        let json = serde_json::to_string(&message).unwrap();
        let go: propeller_go::TaskMetrics = serde_json::from_str(&json)
            .unwrap_or_else(|err| panic!("Propeller cannot decode {json}: {err}"));
        let aggregated = go.aggregated.expect("aggregates");
        assert_eq!(aggregated.avg_memory_usage, 13_907_058);
        assert_eq!(aggregated.sample_count, 3);
        assert_eq!(go.metrics.thread_count, 4);
        assert_eq!(go.metrics.file_descriptor_count, 12);
        assert_eq!(go.task_id, "t1");
        assert_eq!(go.timestamp, message.timestamp);

        let mut reporter = crate::proplet::PropletReporter::new("p1".into(), "default".into());
        let health = Some(KernelHealth::default());
        let proplet = serde_json::to_string(&reporter.sample(3, 0, Source::Ebpf, health)).unwrap();
        let go: propeller_go::PropletMetrics = serde_json::from_str(&proplet)
            .unwrap_or_else(|err| panic!("Propeller cannot decode {proplet}: {err}"));
        assert_eq!(go.proplet_id, "p1");
        assert!(go.memory_metrics.rss_bytes > 0);
    }

    /// The mirror types are strict: the float `avg_memory_usage` propmon
    /// used to send is refused, as Go refuses it.
    #[test]
    fn the_mirror_types_refuse_fractions_where_go_declares_integers() {
        let mut json = serde_json::to_value(full_message_with_aggregates()).unwrap();
        json["aggregated"]["avg_memory_usage"] = serde_json::json!(13_907_057.78);
        let err = serde_json::from_value::<propeller_go::TaskMetrics>(json.clone()).unwrap_err();
        assert!(err.to_string().contains("floating point"), "{err}");
        json["aggregated"]["avg_memory_usage"] = serde_json::json!(1);
        json["metrics"]["thread_count"] = serde_json::json!(4.0);
        assert!(serde_json::from_value::<propeller_go::TaskMetrics>(json.clone()).is_err());
        json["metrics"]["thread_count"] = serde_json::json!(1u64 << 31);
        assert!(serde_json::from_value::<propeller_go::TaskMetrics>(json).is_err());
    }

    #[test]
    fn round_trips() {
        let mut message = sample_message();
        message.details.disk = Some(DiskDetails {
            rchar: 4096,
            ..Default::default()
        });
        message.is_final = true;
        message.end_reason = Some(EndReason::NotFound);
        let line = serde_json::to_string(&message).unwrap();
        assert!(!line.contains('\n'));
        let back: TaskMetricsMessage = serde_json::from_str(&line).unwrap();
        assert_eq!(back, message);
    }
}
