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
//! | `propmon_task_threads`, `propmon_task_open_fds`, `propmon_task_processes` | gauge | `metrics.*_count` |
//! | `propmon_task_processes_started_total` | counter | `metrics.processes_started` |
//! | `propmon_agent_info{source,version}` | gauge (1) | |
//! | `propmon_agent_tasks`, `propmon_agent_task_slots` | gauge | tasks monitored, `--max-tasks` |
//! | `propmon_agent_dropped_messages_total` | counter | `dropped_messages` |
//! | `propmon_agent_cpu_seconds_total`, `propmon_agent_resident_memory_bytes` | counter, gauge | the agent's own use |
//! | `propmon_kernel_*_total` | counter | the kernel side's losses (eBPF) |
//!
//! Agent and kernel series have a `proplet_id` label too, so that one
//! selector picks a node's tasks and its agent.
//!
//! Per-peer traffic (`details.network.peers`) is in the messages and in
//! `/api/v1/tasks`, not in series: a peer label multiplies a task's series
//! by its peers, which change as connections come and go. If it is ever
//! exported, it belongs beside `encode_network`, off unless asked for, the
//! message's top N plus `peer="other"` only.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::latest::Snapshot;
use crate::message::{Source, TaskMetrics, TaskMetricsMessage, Traffic};

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

/// A counter of the kernel side's losses.
struct KernelFigure {
    metric: Metric,
    value: fn(&monitor_common::KernelStats) -> u64,
}

static KERNEL: [KernelFigure; 6] = [
    KernelFigure {
        metric: Metric {
            stem: "propmon_kernel_events_lost",
            help: "Task events the kernel could not queue (ring buffer full); the agent then looks at every task.",
            unit: None,
            kind: Kind::Counter,
        },
        value: |k| k.event_drops,
    },
    KernelFigure {
        metric: Metric {
            stem: "propmon_kernel_thread_storage_failures",
            help: "Threads the kernel could not give task-local storage (out of memory): their figures are missing.",
            unit: None,
            kind: Kind::Counter,
        },
        value: |k| k.storage_failures,
    },
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
            stem: "propmon_kernel_provisional_slots_exhausted",
            help: "Module execs before their start message that found no provisional slot left.",
            unit: None,
            kind: Kind::Counter,
        },
        value: |k| k.provisional_exhausted,
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
            stem: "propmon_kernel_peer_rows_exhausted",
            help: "New peers that found every kernel peer row taken: counted in their task's \"other\" peer.",
            unit: None,
            kind: Kind::Counter,
        },
        value: |k| k.peer_rows_exhausted,
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
        ];
        for (metric, series) in agent {
            encode_metric(encoder, &metric, series)?;
        }
        Ok(())
    }

    fn encode_kernel(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let health = &self.snapshot.health;
        let Some(stats) = &health.kernel else {
            return Ok(());
        };
        for figure in &KERNEL {
            let labels = vec![("proplet_id", health.proplet_id.as_str())];
            let value = Number::Int((figure.value)(stats));
            encode_metric(encoder, &figure.metric, [(labels, value)])?;
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
        }
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
            r#"propmon_kernel_events_lost_total{proplet_id="edge-7"} 2"#,
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
