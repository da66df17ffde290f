//! `/metrics`: a [`Snapshot`] in the Prometheus text format (0.0.4), or in
//! OpenMetrics 1.0 when the scraper asks for it, encoded by
//! `prometheus-client`.
//!
//! Names and units follow Prometheus's conventions: base units (seconds,
//! bytes), `_total` on counters, one metric per figure, the task in labels.
//! Every task series has `task_id` and `proplet_id`; a figure the task's
//! profile does not collect (or the backend cannot know) has no series, as
//! it is left out of the JSON message. A task's series go with its final
//! message.
//!
//! | metric | type | from the message |
//! |---|---|---|
//! | `propmon_task_cpu_seconds_total` | counter | `metrics.cpu_time_ns` |
//! | `propmon_task_memory_bytes` | gauge | `metrics.memory_bytes` |
//! | `propmon_task_disk_read_bytes_total`, `..._write_bytes_total` | counter | `metrics.disk_*_bytes` |
//! | `propmon_task_network_receive_bytes_total{protocol}`, `..._transmit_...` | counter | `details.network.{tcp,udp,other}` |
//! | `propmon_task_unix_socket_receive_bytes_total`, `..._transmit_...` | counter | `details.network.unix` |
//! | `propmon_task_tcp_retransmits_total`, `..._failed_connections_total`, `..._resets_received_total` | counter | `details.network.tcp` |
//! | `propmon_task_peer_*{peer,protocol}` (`--metrics-peers`) | counter, gauge | `details.network.peers` |
//! | `propmon_task_threads`, `propmon_task_open_fds`, `propmon_task_processes` | gauge | `metrics.*_count` |
//! | `propmon_task_processes_started_total` | counter | `metrics.processes_started` |
//! | `propmon_agent_info{source,version}` | gauge (1) | |
//! | `propmon_agent_tasks`, `propmon_agent_task_slots` | gauge | tasks monitored, `--max-tasks` |
//! | `propmon_agent_dropped_messages_total` | counter | `dropped_messages` |
//! | `propmon_agent_cpu_seconds_total`, `propmon_agent_resident_memory_bytes` | counter, gauge | the agent's own use |
//! | `propmon_agent_mqtt_connected`, `propmon_agent_export_queue_{length,capacity}` | gauge | the MQTT exporter, when configured |
//! | `propmon_kernel_programs_{loaded,attached}` | gauge | the agent's eBPF programs |
//! | `propmon_kernel_map_{entries,capacity}{map}`, `propmon_kernel_map_failed_inserts_total{map}` | gauge, counter | the bounded kernel maps (eBPF) |
//! | `propmon_kernel_*_total` | counter | the kernel side's other losses (eBPF) |
//!
//! Agent and kernel series have a `proplet_id` label too, so that one
//! selector picks a node's tasks and its agent.
//!
//! Per-peer series are off unless asked for (`--metrics-peers`): a `peer`
//! label multiplies a task's series by its peers. They are made from the
//! message's own list only (the profile's `max_peers` busiest, then
//! `peer="other"`, which has no `protocol`), so a task has at most
//! `max_peers + 1` series per peer metric, whatever it talks to.

use std::{
    collections::{HashMap, hash_map::Entry},
    fmt,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::latest::Snapshot;
use crate::message::{Peer, Source, TaskMetrics, TaskMetricsMessage, TcpTraffic, Traffic};

/// The exposition format of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: what `curl` and `promtool` get.
    Prometheus,
    /// OpenMetrics 1.0 text: what Prometheus asks for first.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header prefers: OpenMetrics when it is asked
    /// for at least as strongly as plain text, else the Prometheus format.
    pub fn from_accept(accept: Option<&str>) -> Self {
        let mut openmetrics = 0.0_f32;
        let mut text = 0.0_f32;
        for entry in accept.unwrap_or_default().split(',') {
            let mut parts = entry.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let quality = parts
                .filter_map(|param| param.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
                "text/plain" | "text/*" | "*/*" => text = text.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The page of `/metrics`.
pub fn render(snapshot: Snapshot, format: Format) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition {
        snapshot,
        own: OwnUsage::now(),
    }));
    let mut page = String::new();
    match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut page, &registry)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut page, &registry)?,
    }
    Ok(page)
}

/// The agent's own CPU and memory, read when scraped.
#[derive(Debug)]
struct OwnUsage {
    cpu_seconds: Option<f64>,
    rss_bytes: Option<u64>,
}

impl OwnUsage {
    fn now() -> Self {
        #[cfg(unix)]
        let cpu_seconds = {
            let (user, system) = crate::proplet::own_cpu_seconds();
            // getrusage counts microseconds: no float noise beyond them.
            Some(((user + system) * 1e6).round() / 1e6)
        };
        #[cfg(not(unix))]
        let cpu_seconds = None;
        #[cfg(target_os = "linux")]
        let rss_bytes = Some(crate::collect::procfs::own_rss_bytes());
        #[cfg(not(target_os = "linux"))]
        let rss_bytes = None;
        OwnUsage {
            cpu_seconds,
            rss_bytes,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Clone, Copy, Debug)]
enum Number {
    Int(u64),
    Float(f64),
}

impl Number {
    fn encode(self, kind: Kind, encoder: MetricEncoder) -> fmt::Result {
        match (kind, self) {
            (Kind::Counter, Number::Int(n)) => ConstCounter::new(n).encode(encoder),
            (Kind::Counter, Number::Float(n)) => ConstCounter::new(n).encode(encoder),
            (Kind::Gauge, Number::Int(n)) => ConstGauge::new(n).encode(encoder),
            (Kind::Gauge, Number::Float(n)) => ConstGauge::new(n).encode(encoder),
        }
    }
}

/// One metric: its name before the unit and `_total`, which the encoder
/// appends (`propmon_task_cpu` + seconds, counter:
/// `propmon_task_cpu_seconds_total`).
struct Metric {
    stem: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: Kind,
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Encodes one metric and its series; nothing at all if it has none.
fn encode_metric<'a>(
    encoder: &mut DescriptorEncoder,
    metric: &Metric,
    series: impl IntoIterator<Item = (Labels<'a>, Number)>,
) -> fmt::Result {
    let mut series = series.into_iter().peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let metric_type = match metric.kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
    };
    let mut family =
        encoder.encode_descriptor(metric.stem, metric.help, metric.unit.as_ref(), metric_type)?;
    for (labels, value) in series {
        value.encode(metric.kind, family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A figure of the per-task message.
struct TaskFigure {
    metric: Metric,
    value: fn(&TaskMetrics) -> Option<Number>,
}

static TASK_FIGURES: [TaskFigure; 8] = [
    TaskFigure {
        metric: Metric {
            stem: "propmon_task_cpu",
            help: "CPU time of the task's threads and all its descendants, exited ones included.",
            unit: Some(Unit::Seconds),
            kind: Kind::Counter,
        },
        value: |m| m.cpu_time_ns.map(|ns| Number::Float(ns as f64 / 1e9)),
    },
    TaskFigure {
        metric: Metric {
            stem: "propmon_task_memory",
            help: "Resident memory (RSS) summed over the task's live processes.",
            unit: Some(Unit::Bytes),
            kind: Kind::Gauge,
        },
        value: |m| m.memory_bytes.map(Number::Int),
    },
    TaskFigure {
        metric: Metric {
            stem: "propmon_task_disk_read",
            help: "Bytes the task caused to be read from block devices (read_bytes of /proc/PID/io).",
            unit: Some(Unit::Bytes),
            kind: Kind::Counter,
        },
        value: |m| m.disk_read_bytes.map(Number::Int),
    },
    TaskFigure {
        metric: Metric {
            stem: "propmon_task_disk_write",
            help: "Bytes the task dirtied in the page cache or wrote directly (write_bytes of /proc/PID/io).",
            unit: Some(Unit::Bytes),
            kind: Kind::Counter,
        },
        value: |m| m.disk_write_bytes.map(Number::Int),
    },
    TaskFigure {
        metric: Metric {
            stem: "propmon_task_threads",
            help: "Threads of the task's live processes.",
            unit: None,
            kind: Kind::Gauge,
        },
        value: |m| m.thread_count.map(Number::Int),
    },
    TaskFigure {
        metric: Metric {
            stem: "propmon_task_open_fds",
            help: "Open file descriptors of the task's live processes.",
            unit: None,
            kind: Kind::Gauge,
        },
        value: |m| m.file_descriptor_count.map(Number::Int),
    },
    TaskFigure {
        metric: Metric {
            stem: "propmon_task_processes",
            help: "Live processes of the task.",
            unit: None,
            kind: Kind::Gauge,
        },
        value: |m| Some(Number::Int(m.process_count)),
    },
    TaskFigure {
        metric: Metric {
            stem: "propmon_task_processes_started",
            help: "Processes that ever belonged to the task, its root included.",
            unit: None,
            kind: Kind::Counter,
        },
        value: |m| m.processes_started.map(Number::Int),
    },
];

/// Socket payload by direction, from `details.network`.
struct NetworkFigure {
    metric: Metric,
    bytes: fn(&Traffic) -> u64,
}

static NETWORK: [NetworkFigure; 2] = [
    NetworkFigure {
        metric: Metric {
            stem: "propmon_task_network_receive",
            help: "Payload bytes received over the task's AF_INET and AF_INET6 sockets, by protocol (tcp, udp, other).",
            unit: Some(Unit::Bytes),
            kind: Kind::Counter,
        },
        bytes: |t| t.rx_bytes,
    },
    NetworkFigure {
        metric: Metric {
            stem: "propmon_task_network_transmit",
            help: "Payload bytes sent over the task's AF_INET and AF_INET6 sockets, by protocol (tcp, udp, other).",
            unit: Some(Unit::Bytes),
            kind: Kind::Counter,
        },
        bytes: |t| t.tx_bytes,
    },
];

static UNIX_SOCKETS: [NetworkFigure; 2] = [
    NetworkFigure {
        metric: Metric {
            stem: "propmon_task_unix_socket_receive",
            help: "Payload bytes received over the task's AF_UNIX sockets (not in the network figures).",
            unit: Some(Unit::Bytes),
            kind: Kind::Counter,
        },
        bytes: |t| t.rx_bytes,
    },
    NetworkFigure {
        metric: Metric {
            stem: "propmon_task_unix_socket_transmit",
            help: "Payload bytes sent over the task's AF_UNIX sockets (not in the network figures).",
            unit: Some(Unit::Bytes),
            kind: Kind::Counter,
        },
        bytes: |t| t.tx_bytes,
    },
];

/// TCP's health over all of a task's TCP sockets, from `details.network.tcp`.
struct TcpFigure {
    metric: Metric,
    value: fn(&TcpTraffic) -> Option<u64>,
}

static TCP_HEALTH: [TcpFigure; 3] = [
    TcpFigure {
        metric: Metric {
            stem: "propmon_task_tcp_retransmits",
            help: "TCP segments the task's sockets retransmitted.",
            unit: None,
            kind: Kind::Counter,
        },
        value: |t| t.retransmits,
    },
    TcpFigure {
        metric: Metric {
            stem: "propmon_task_tcp_failed_connections",
            help: "TCP connections of the task that never got established: refused, timed out, or reset during the handshake.",
            unit: None,
            kind: Kind::Counter,
        },
        value: |t| t.failed_connections,
    },
    TcpFigure {
        metric: Metric {
            stem: "propmon_task_tcp_resets_received",
            help: "Established TCP connections of the task that the other end reset.",
            unit: None,
            kind: Kind::Counter,
        },
        value: |t| t.resets_received,
    },
];

/// A figure of each peer the message lists (`--metrics-peers`).
struct PeerFigure {
    metric: Metric,
    value: fn(&Peer) -> Option<Number>,
}

static PEERS: [PeerFigure; 5] = [
    PeerFigure {
        metric: Metric {
            stem: "propmon_task_peer_receive",
            help: "Payload bytes the task received from a peer (its busiest ones; peer=\"other\" for the rest).",
            unit: Some(Unit::Bytes),
            kind: Kind::Counter,
        },
        value: |p| Some(Number::Int(p.rx_bytes)),
    },
    PeerFigure {
        metric: Metric {
            stem: "propmon_task_peer_transmit",
            help: "Payload bytes the task sent to a peer (its busiest ones; peer=\"other\" for the rest).",
            unit: Some(Unit::Bytes),
            kind: Kind::Counter,
        },
        value: |p| Some(Number::Int(p.tx_bytes)),
    },
    PeerFigure {
        metric: Metric {
            stem: "propmon_task_peer_connections_opened",
            help: "TCP connections of the task with a peer that got established (connected or accepted).",
            unit: None,
            kind: Kind::Counter,
        },
        value: |p| tcp_figure(p, p.connections_opened),
    },
    PeerFigure {
        metric: Metric {
            stem: "propmon_task_peer_connections_open",
            help: "TCP connections of the task with a peer that are established now.",
            unit: None,
            kind: Kind::Gauge,
        },
        value: |p| tcp_figure(p, p.connections_open),
    },
    PeerFigure {
        metric: Metric {
            stem: "propmon_task_peer_retransmits",
            help: "TCP segments the task's sockets retransmitted to a peer.",
            unit: None,
            kind: Kind::Counter,
        },
        value: |p| p.retransmits.map(Number::Int),
    },
];

/// A connection figure: TCP peers and the `other` entry have them; UDP,
/// which has no connections, would only add series of zeros.
fn tcp_figure(peer: &Peer, value: u64) -> Option<Number> {
    matches!(peer.protocol.as_deref(), Some("tcp") | None).then_some(Number::Int(value))
}

/// A task's peers, one entry per label set: entries the message keeps
/// apart but labels cannot (UDP and UDP-Lite are both `udp`; ICMP and
/// SCTP both `other`) would be one series twice, which a scrape refuses.
fn peers_by_labels(peers: &[Peer]) -> Vec<Peer> {
    let mut merged: Vec<Peer> = Vec::with_capacity(peers.len());
    let mut index: HashMap<(&str, Option<&str>), usize> = HashMap::with_capacity(peers.len());
    for peer in peers {
        match index.entry((peer.peer.as_str(), peer.protocol.as_deref())) {
            Entry::Vacant(entry) => {
                entry.insert(merged.len());
                merged.push(peer.clone());
            }
            Entry::Occupied(entry) => {
                let into = &mut merged[*entry.get()];
                into.rx_bytes = into.rx_bytes.saturating_add(peer.rx_bytes);
                into.tx_bytes = into.tx_bytes.saturating_add(peer.tx_bytes);
                into.connections_opened = into
                    .connections_opened
                    .saturating_add(peer.connections_opened);
                into.connections_closed = into
                    .connections_closed
                    .saturating_add(peer.connections_closed);
                into.connections_open = into.connections_open.saturating_add(peer.connections_open);
                into.retransmits = match (into.retransmits, peer.retransmits) {
                    (None, None) => None,
                    (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
                };
            }
        }
    }
    merged
}

/// A counter of the kernel side's losses.
struct KernelFigure {
    metric: Metric,
    value: fn(&monitor_common::KernelStats) -> u64,
}

/// Losses that are no map's (a full map's are failed inserts, below).
static KERNEL: [KernelFigure; 3] = [
    KernelFigure {
        metric: Metric {
            stem: "propmon_kernel_argv_read_failures",
            help: "Execs whose argv could not be searched for a task's module.",
            unit: None,
            kind: Kind::Counter,
        },
        value: |k| k.argv_read_failures,
    },
    KernelFigure {
        metric: Metric {
            stem: "propmon_kernel_lineage_refusals",
            help: "Module execs refused because they do not descend from the proplet.",
            unit: None,
            kind: Kind::Counter,
        },
        value: |k| k.lineage_refused,
    },
    KernelFigure {
        metric: Metric {
            stem: "propmon_kernel_layout_mismatches",
            help: "Sampling passes that found the kernel's structs not where the offsets read from BTF say: figures cannot be trusted.",
            unit: None,
            kind: Kind::Counter,
        },
        value: |k| k.layout_mismatches,
    },
];

static PROGRAMS_LOADED: Metric = Metric {
    stem: "propmon_kernel_programs_loaded",
    help: "eBPF programs the agent has in the kernel (loaded by it, or kept by a previous agent's pinned links).",
    unit: None,
    kind: Kind::Gauge,
};

static PROGRAMS_ATTACHED: Metric = Metric {
    stem: "propmon_kernel_programs_attached",
    help: "eBPF programs attached to their hook; fewer than loaded when an optional hook could not attach.",
    unit: None,
    kind: Kind::Gauge,
};

static MAP_ENTRIES: Metric = Metric {
    stem: "propmon_kernel_map_entries",
    help: "Entries in use in a bounded kernel map.",
    unit: None,
    kind: Kind::Gauge,
};

static MAP_CAPACITY: Metric = Metric {
    stem: "propmon_kernel_map_capacity",
    help: "Entries a bounded kernel map can hold (tasks: --max-tasks).",
    unit: None,
    kind: Kind::Gauge,
};

static MAP_FAILED_INSERTS: Metric = Metric {
    stem: "propmon_kernel_map_failed_inserts",
    help: "Entries a kernel map had no room for: task events lost (events), peers counted in \"other\" (peers), threads that could not follow their process to another cgroup (pending_moves), early module execs with no slot (provisional) or not recorded (provisional_roots), threads without their task (threads).",
    unit: None,
    kind: Kind::Counter,
};

/// A loss counter of the kernel's that counts failed inserts into a map.
struct FailedInserts {
    /// The `map` label.
    map: &'static str,
    value: fn(&monitor_common::KernelStats) -> u64,
}

/// Sorted by map, as the maps' usage is.
static FAILED_INSERTS: [FailedInserts; 6] = [
    // Task events the ring buffer had no room for.
    FailedInserts {
        map: "events",
        value: |k| k.event_drops,
    },
    // New peers that found every row taken: counted in their task's "other".
    FailedInserts {
        map: "peers",
        value: |k| k.peer_rows_exhausted,
    },
    // Threads of a process that changed cgroup whose move was not kept.
    FailedInserts {
        map: "pending_moves",
        value: |k| k.move_failures,
    },
    // Module execs before their start message that found no slot ready.
    FailedInserts {
        map: "provisional",
        value: |k| k.provisional_exhausted,
    },
    // Provisional roots the map of early module execs had no room for.
    FailedInserts {
        map: "provisional_roots",
        value: |k| k.discovery_map_full,
    },
    // Threads the kernel could not give task-local storage (out of memory).
    FailedInserts {
        map: "threads",
        value: |k| k.storage_failures,
    },
];

/// Everything `/metrics` shows, encoded at each scrape.
#[derive(Debug)]
struct Exposition {
    snapshot: Snapshot,
    own: OwnUsage,
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.encode_tasks(&mut encoder)?;
        self.encode_network(&mut encoder)?;
        self.encode_peers(&mut encoder)?;
        self.encode_agent(&mut encoder)?;
        self.encode_kernel(&mut encoder)
    }
}

fn task_labels(message: &TaskMetricsMessage) -> Labels<'_> {
    vec![
        ("task_id", message.task_id.as_str()),
        ("proplet_id", message.proplet_id.as_str()),
    ]
}

impl Exposition {
    fn encode_tasks(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        for figure in &TASK_FIGURES {
            let series = self.snapshot.tasks.iter().filter_map(|message| {
                (figure.value)(&message.metrics).map(|value| (task_labels(message), value))
            });
            encode_metric(encoder, &figure.metric, series)?;
        }
        Ok(())
    }

    fn encode_network(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        for figure in &NETWORK {
            let series = self.snapshot.tasks.iter().flat_map(|message| {
                let network = message.details.network.as_ref();
                let protocols = network
                    .map(|n| [("tcp", n.tcp.traffic()), ("udp", n.udp), ("other", n.other)])
                    .into_iter()
                    .flatten();
                protocols.map(|(protocol, traffic)| {
                    let mut labels = task_labels(message);
                    labels.push(("protocol", protocol));
                    (labels, Number::Int((figure.bytes)(&traffic)))
                })
            });
            encode_metric(encoder, &figure.metric, series)?;
        }
        for figure in &UNIX_SOCKETS {
            let series = self.snapshot.tasks.iter().filter_map(|message| {
                let unix = message.details.network.as_ref()?.unix;
                Some((task_labels(message), Number::Int((figure.bytes)(&unix))))
            });
            encode_metric(encoder, &figure.metric, series)?;
        }
        for figure in &TCP_HEALTH {
            let series = self.snapshot.tasks.iter().filter_map(|message| {
                let value = (figure.value)(&message.details.network.as_ref()?.tcp)?;
                Some((task_labels(message), Number::Int(value)))
            });
            encode_metric(encoder, &figure.metric, series)?;
        }
        Ok(())
    }

    fn encode_peers(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        if !self.snapshot.peer_series {
            return Ok(());
        }
        let listed: Vec<(&TaskMetricsMessage, Vec<Peer>)> = (self.snapshot.tasks.iter())
            .filter_map(|message| {
                let peers = &message.details.network.as_ref()?.peers;
                (!peers.is_empty()).then(|| (message.as_ref(), peers_by_labels(peers)))
            })
            .collect();
        for figure in &PEERS {
            let series = listed.iter().flat_map(|(message, peers)| {
                peers.iter().filter_map(|peer| {
                    let value = (figure.value)(peer)?;
                    let mut labels = task_labels(message);
                    labels.push(("peer", peer.peer.as_str()));
                    // The `other` entry has none: the label is left out.
                    if let Some(protocol) = &peer.protocol {
                        labels.push(("protocol", protocol.as_str()));
                    }
                    Some((labels, value))
                })
            });
            encode_metric(encoder, &figure.metric, series)?;
        }
        Ok(())
    }

    fn encode_agent(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let health = &self.snapshot.health;
        let proplet = || vec![("proplet_id", health.proplet_id.as_str())];
        let source = match health.source {
            Source::Ebpf => "ebpf",
            Source::Sysinfo => "sysinfo",
        };
        let mut info = proplet();
        info.extend([("source", source), ("version", env!("CARGO_PKG_VERSION"))]);
        let gauge = |stem, help, unit| Metric {
            stem,
            help,
            unit,
            kind: Kind::Gauge,
        };
        let counter = |stem, help, unit| Metric {
            stem,
            help,
            unit,
            kind: Kind::Counter,
        };
        let agent = [
            (
                gauge(
                    "propmon_agent_info",
                    "The agent: its backend (source) and version.",
                    None,
                ),
                Some((info, Number::Int(1))),
            ),
            (
                gauge("propmon_agent_tasks", "Tasks monitored.", None),
                Some((proplet(), Number::Int(health.tasks))),
            ),
            (
                gauge(
                    "propmon_agent_task_slots",
                    "Tasks the agent can monitor at once (--max-tasks).",
                    None,
                ),
                Some((proplet(), Number::Int(health.task_slots))),
            ),
            (
                counter(
                    "propmon_agent_dropped_messages",
                    "Messages dropped since start: a full export queue, or refused by the broker.",
                    None,
                ),
                Some((proplet(), Number::Int(health.dropped_messages))),
            ),
            (
                counter(
                    "propmon_agent_cpu",
                    "CPU time of the agent itself.",
                    Some(Unit::Seconds),
                ),
                self.own.cpu_seconds.map(|s| (proplet(), Number::Float(s))),
            ),
            (
                gauge(
                    "propmon_agent_resident_memory",
                    "Resident memory of the agent itself.",
                    Some(Unit::Bytes),
                ),
                self.own.rss_bytes.map(|b| (proplet(), Number::Int(b))),
            ),
            (
                gauge(
                    "propmon_agent_mqtt_connected",
                    "1 while the agent is connected to its MQTT broker, else 0.",
                    None,
                ),
                health
                    .mqtt
                    .map(|m| (proplet(), Number::Int(u64::from(m.connected)))),
            ),
            (
                gauge(
                    "propmon_agent_export_queue_length",
                    "Messages waiting to be handed to the MQTT broker.",
                    None,
                ),
                health.mqtt.map(|m| (proplet(), Number::Int(m.queued))),
            ),
            (
                gauge(
                    "propmon_agent_export_queue_capacity",
                    "Messages the export queue keeps at most (--mqtt-queue-size); beyond it the oldest are dropped.",
                    None,
                ),
                health
                    .mqtt
                    .map(|m| (proplet(), Number::Int(m.queue_capacity))),
            ),
        ];
        for (metric, series) in agent {
            encode_metric(encoder, &metric, series)?;
        }
        Ok(())
    }

    fn encode_kernel(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let health = &self.snapshot.health;
        let proplet = health.proplet_id.as_str();
        let node = || vec![("proplet_id", proplet)];
        let per_map = |map: &'static str, value: u64| {
            (
                vec![("proplet_id", proplet), ("map", map)],
                Number::Int(value),
            )
        };
        if let Some(usage) = &health.kernel_usage {
            let programs = [
                (&PROGRAMS_LOADED, usage.programs_loaded),
                (&PROGRAMS_ATTACHED, usage.programs_attached),
            ];
            for (metric, count) in programs {
                let value = Number::Int(u64::from(count));
                encode_metric(encoder, metric, [(node(), value)])?;
            }
            let entries = usage.maps.iter().map(|m| per_map(m.map, m.entries));
            encode_metric(encoder, &MAP_ENTRIES, entries)?;
            let capacity = usage.maps.iter().map(|m| per_map(m.map, m.capacity));
            encode_metric(encoder, &MAP_CAPACITY, capacity)?;
        }
        let Some(stats) = &health.kernel else {
            return Ok(());
        };
        let failed = FAILED_INSERTS
            .iter()
            .map(|f| per_map(f.map, (f.value)(stats)));
        encode_metric(encoder, &MAP_FAILED_INSERTS, failed)?;
        for figure in &KERNEL {
            let value = Number::Int((figure.value)(stats));
            encode_metric(encoder, &figure.metric, [(node(), value)])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::message::TcpTraffic;
    use crate::{
        export::latest::tests::{health, message},
        message::NetworkDetails,
    };

    fn snapshot() -> Snapshot {
        let mut web = message("web", 3, false);
        web.metrics.disk_read_bytes = Some(4096);
        web.details.network = Some(NetworkDetails {
            tcp: TcpTraffic {
                rx_bytes: 100,
                tx_bytes: 200,
                ..TcpTraffic::default()
            },
            unix: Traffic {
                rx_bytes: 7,
                tx_bytes: 8,
            },
            ..Default::default()
        });
        // Label values are escaped: ids may hold quotes and backslashes.
        let odd = message(r#"we"ird\id"#, 1, false);
        let mut health = health();
        health.kernel = Some(monitor_common::KernelStats {
            event_drops: 2,
            ..Default::default()
        });
        Snapshot {
            tasks: vec![Arc::new(web), Arc::new(odd)],
            health,
            peer_series: false,
        }
    }

    fn peer(name: &str, protocol: Option<&str>, rx: u64, tx: u64) -> Peer {
        Peer {
            peer: name.into(),
            protocol: protocol.map(str::to_owned),
            rx_bytes: rx,
            tx_bytes: tx,
            ..Peer::default()
        }
    }

    /// A task that talks to peers, as the eBPF backend reports it.
    fn talker() -> TaskMetricsMessage {
        let mut api = message("api", 2, false);
        let tcp = Peer {
            connections_opened: 201,
            connections_closed: 200,
            connections_open: 1,
            retransmits: Some(3),
            ..peer("192.0.2.2:7071", Some("tcp"), 120_000, 603_216)
        };
        let other = Peer {
            retransmits: Some(0),
            ..peer("other", None, 4096, 0)
        };
        api.details.network = Some(NetworkDetails {
            tcp: TcpTraffic {
                rx_bytes: 124_096,
                tx_bytes: 603_216,
                retransmits: Some(3),
                failed_connections: Some(1),
                resets_received: Some(0),
            },
            udp: Traffic {
                rx_bytes: 100,
                tx_bytes: 111,
            },
            peers: vec![
                tcp,
                peer("[2001:db8::2]:7070", Some("udp"), 100, 100),
                // UDP and UDP-Lite: one label set, one series.
                peer("unconnected", Some("udp"), 0, 5),
                peer("unconnected", Some("udp"), 0, 6),
                other,
            ],
            ..Default::default()
        });
        api
    }

    fn page_of(tasks: Vec<TaskMetricsMessage>, peer_series: bool) -> String {
        let snapshot = Snapshot {
            tasks: tasks.into_iter().map(Arc::new).collect(),
            health: health(),
            peer_series,
        };
        render(snapshot, Format::Prometheus).unwrap()
    }

    #[test]
    fn task_tcp_health_is_shown_when_the_message_has_it() {
        let page = page_of(vec![talker(), message("quiet", 1, false)], false);
        let labels = r#"{task_id="api",proplet_id="edge-7"}"#;
        for line in [
            "# TYPE propmon_task_tcp_retransmits_total counter".to_owned(),
            format!("propmon_task_tcp_retransmits_total{labels} 3"),
            format!("propmon_task_tcp_failed_connections_total{labels} 1"),
            format!("propmon_task_tcp_resets_received_total{labels} 0"),
        ] {
            assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
        assert!(!page.contains(r#"tcp_retransmits_total{task_id="quiet""#));
    }

    #[test]
    fn peer_series_only_when_asked_for() {
        let page = page_of(vec![talker()], false);
        assert!(!page.contains("propmon_task_peer"), "{page}");
    }

    /// Issue 12: the message's own list, one series per peer and metric,
    /// labels escaped as the format wants; `other` has no protocol.
    #[test]
    fn peer_series_follow_the_messages_list() {
        let mut odd = message("odd", 1, false);
        odd.details.network = Some(NetworkDetails {
            peers: vec![peer("we\"ird\\peer\n", Some("tcp"), 1, 2)],
            ..Default::default()
        });
        let page = page_of(vec![talker(), odd], true);
        let task = r#"task_id="api",proplet_id="edge-7""#;
        let expected = [
            "# HELP propmon_task_peer_receive_bytes_total Payload bytes the task received from a peer (its busiest ones; peer=\"other\" for the rest).".to_owned(),
            "# TYPE propmon_task_peer_receive_bytes_total counter".to_owned(),
            format!(r#"propmon_task_peer_receive_bytes_total{{{task},peer="192.0.2.2:7071",protocol="tcp"}} 120000"#),
            format!(r#"propmon_task_peer_receive_bytes_total{{{task},peer="[2001:db8::2]:7070",protocol="udp"}} 100"#),
            format!(r#"propmon_task_peer_receive_bytes_total{{{task},peer="unconnected",protocol="udp"}} 0"#),
            format!(r#"propmon_task_peer_receive_bytes_total{{{task},peer="other"}} 4096"#),
            r#"propmon_task_peer_receive_bytes_total{task_id="odd",proplet_id="edge-7",peer="we\"ird\\peer\n",protocol="tcp"} 1"#.to_owned(),
            format!(r#"propmon_task_peer_transmit_bytes_total{{{task},peer="192.0.2.2:7071",protocol="tcp"}} 603216"#),
            format!(r#"propmon_task_peer_transmit_bytes_total{{{task},peer="unconnected",protocol="udp"}} 11"#),
            format!(r#"propmon_task_peer_transmit_bytes_total{{{task},peer="other"}} 0"#),
            format!(r#"propmon_task_peer_connections_opened_total{{{task},peer="192.0.2.2:7071",protocol="tcp"}} 201"#),
            "# TYPE propmon_task_peer_connections_open gauge".to_owned(),
            format!(r#"propmon_task_peer_connections_open{{{task},peer="192.0.2.2:7071",protocol="tcp"}} 1"#),
            format!(r#"propmon_task_peer_connections_open{{{task},peer="other"}} 0"#),
            format!(r#"propmon_task_peer_retransmits_total{{{task},peer="192.0.2.2:7071",protocol="tcp"}} 3"#),
            format!(r#"propmon_task_peer_retransmits_total{{{task},peer="other"}} 0"#),
        ];
        for line in &expected {
            assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
        // Each label set once: the two unconnected UDP entries are one.
        let receive: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("propmon_task_peer_receive_bytes_total{task_id=\"api\""))
            .collect();
        assert_eq!(receive.len(), 4, "{receive:#?}");
        // UDP has no connections nor retransmissions: no series rather
        // than made-up zeros.
        for metric in [
            "connections_opened_total",
            "connections_open",
            "retransmits_total",
        ] {
            let udp = format!(r#"propmon_task_peer_{metric}{{{task},peer="[2001"#);
            assert!(!page.contains(&udp), "{udp}");
        }
    }

    #[test]
    fn agent_health_shows_the_exporter_and_the_kernel_maps() {
        let mut snapshot = snapshot();
        snapshot.health.mqtt = Some(crate::export::latest::MqttHealth {
            connected: true,
            queued: 7,
            queue_capacity: 60_000,
        });
        snapshot.health.kernel_usage = Some(crate::collect::KernelUsage {
            programs_loaded: 12,
            programs_attached: 11,
            maps: vec![
                crate::collect::MapUsage {
                    map: "peers",
                    entries: 40,
                    capacity: 16_384,
                },
                crate::collect::MapUsage {
                    map: "tasks",
                    entries: 3,
                    capacity: 4096,
                },
            ],
        });
        snapshot.health.kernel = Some(monitor_common::KernelStats {
            event_drops: 2,
            storage_failures: 1,
            peer_rows_exhausted: 5,
            provisional_exhausted: 4,
            argv_read_failures: 6,
            lineage_refused: 8,
            discovery_map_full: 3,
            move_failures: 9,
            layout_mismatches: 10,
        });
        let page = render(snapshot, Format::Prometheus).unwrap();
        let node = r#"proplet_id="edge-7""#;
        for line in [
            format!("propmon_agent_mqtt_connected{{{node}}} 1"),
            format!("propmon_agent_export_queue_length{{{node}}} 7"),
            format!("propmon_agent_export_queue_capacity{{{node}}} 60000"),
            "# TYPE propmon_kernel_programs_loaded gauge".to_owned(),
            format!("propmon_kernel_programs_loaded{{{node}}} 12"),
            format!("propmon_kernel_programs_attached{{{node}}} 11"),
            format!(r#"propmon_kernel_map_entries{{{node},map="peers"}} 40"#),
            format!(r#"propmon_kernel_map_capacity{{{node},map="peers"}} 16384"#),
            format!(r#"propmon_kernel_map_entries{{{node},map="tasks"}} 3"#),
            format!(r#"propmon_kernel_map_capacity{{{node},map="tasks"}} 4096"#),
            "# TYPE propmon_kernel_map_failed_inserts_total counter".to_owned(),
            format!(r#"propmon_kernel_map_failed_inserts_total{{{node},map="events"}} 2"#),
            format!(r#"propmon_kernel_map_failed_inserts_total{{{node},map="peers"}} 5"#),
            format!(r#"propmon_kernel_map_failed_inserts_total{{{node},map="pending_moves"}} 9"#),
            format!(r#"propmon_kernel_map_failed_inserts_total{{{node},map="provisional"}} 4"#),
            format!(
                r#"propmon_kernel_map_failed_inserts_total{{{node},map="provisional_roots"}} 3"#
            ),
            format!(r#"propmon_kernel_map_failed_inserts_total{{{node},map="threads"}} 1"#),
            format!("propmon_kernel_argv_read_failures_total{{{node}}} 6"),
            format!("propmon_kernel_lineage_refusals_total{{{node}}} 8"),
            format!("propmon_kernel_layout_mismatches_total{{{node}}} 10"),
        ] {
            assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
        // A disconnected broker is a 0, not a missing series.
        let mut snapshot = self::snapshot();
        snapshot.health.mqtt = Some(crate::export::latest::MqttHealth {
            connected: false,
            queued: 0,
            queue_capacity: 1,
        });
        let page = render(snapshot, Format::Prometheus).unwrap();
        assert!(page.contains("propmon_agent_mqtt_connected{proplet_id=\"edge-7\"} 0\n"));
    }

    #[test]
    fn no_exporter_no_exporter_series() {
        let page = render(snapshot(), Format::Prometheus).unwrap();
        assert!(
            !page.contains("mqtt") && !page.contains("export_queue"),
            "{page}"
        );
        assert!(
            !page.contains("propmon_kernel_programs"),
            "no usage reported"
        );
    }

    #[test]
    fn prometheus_text_has_conventional_names_and_escaped_labels() {
        let page = render(snapshot(), Format::Prometheus).unwrap();
        for line in [
            "# TYPE propmon_task_cpu_seconds_total counter",
            r#"propmon_task_cpu_seconds_total{task_id="web",proplet_id="edge-7"} 1.5"#,
            "# TYPE propmon_task_memory_bytes gauge",
            r#"propmon_task_memory_bytes{task_id="web",proplet_id="edge-7"} 4096"#,
            r#"propmon_task_disk_read_bytes_total{task_id="web",proplet_id="edge-7"} 4096"#,
            r#"propmon_task_network_receive_bytes_total{task_id="web",proplet_id="edge-7",protocol="tcp"} 100"#,
            r#"propmon_task_network_transmit_bytes_total{task_id="web",proplet_id="edge-7",protocol="udp"} 0"#,
            r#"propmon_task_unix_socket_transmit_bytes_total{task_id="web",proplet_id="edge-7"} 8"#,
            r#"propmon_task_processes{task_id="we\"ird\\id",proplet_id="edge-7"} 1"#,
            r#"propmon_agent_info{proplet_id="edge-7",source="ebpf",version="0.1.0"} 1"#,
            r#"propmon_agent_task_slots{proplet_id="edge-7"} 4096"#,
            r#"propmon_agent_dropped_messages_total{proplet_id="edge-7"} 0"#,
            r#"propmon_kernel_map_failed_inserts_total{proplet_id="edge-7",map="events"} 2"#,
        ] {
            assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
        // Not collected, not shown (never a made-up 0).
        assert!(!page.contains("propmon_task_disk_write"), "{page}");
        assert!(!page.contains(r#"task_id="we\"ird\\id",proplet_id="edge-7",protocol"#));
        assert!(!page.contains("# EOF") && !page.contains("# UNIT"));
    }

    #[test]
    fn openmetrics_when_asked_for() {
        let page = render(snapshot(), Format::OpenMetrics).unwrap();
        assert!(page.ends_with("# EOF\n"), "{page}");
        assert!(page.contains("# TYPE propmon_task_cpu_seconds counter\n"));
        assert!(page.contains("# UNIT propmon_task_cpu_seconds seconds\n"));
        assert!(
            page.contains(
                r#"propmon_task_cpu_seconds_total{task_id="web",proplet_id="edge-7"} 1.5"#
            )
        );
    }

    #[test]
    fn the_kernel_counters_need_a_kernel_side() {
        let mut snapshot = snapshot();
        snapshot.health.kernel = None;
        snapshot.health.source = Source::Sysinfo;
        let page = render(snapshot, Format::Prometheus).unwrap();
        assert!(!page.contains("propmon_kernel"), "{page}");
        assert!(page.contains(r#"source="sysinfo""#));
    }

    #[test]
    fn accept_headers_choose_the_format() {
        // What Prometheus 2.42 sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text; q=0.3, text/plain; q=0.9"
            )),
            Format::Prometheus
        );
        assert_eq!(
            Format::from_accept(Some("APPLICATION/OpenMetrics-Text")),
            Format::OpenMetrics
        );
        for garbage in [
            "",
            ";;;,,,",
            "q=2",
            "application/openmetrics-text;q=zz",
            "\u{1b}",
        ] {
            let _ = Format::from_accept(Some(garbage)); // no panic
        }
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text;q=0")),
            Format::Prometheus
        );
    }
}
