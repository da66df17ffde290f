//! What `propmon top` shows, computed from task messages alone: one row
//! per task, rates between two messages of a task, and a task's details.
//! No terminal here: batch mode and the terminal view both read this.
//!
//! A rate is the growth of a cumulative figure between the two latest
//! messages of a task that `top` saw, over the time between their
//! timestamps. Standalone, `top` sees every message; against an agent it
//! sees the latest one at each poll, so a task on a 10 s interval gets
//! rates over 10 s.

use std::{collections::BTreeMap, time::SystemTime};

use crate::message::{EndReason, Peer, TaskMetricsMessage, TcpTraffic, Traffic};

/// How many refreshes a task that ended stays on show, marked as such.
pub const KEEP_ENDED: u64 = 5;

/// How rows are ordered: largest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// CPU used over the last interval.
    #[default]
    Cpu,
    /// Resident memory.
    Memory,
    /// Disk bytes read and written per second.
    Disk,
    /// Network bytes received and sent per second.
    Network,
}

impl SortKey {
    /// The key of the terminal view that picks this order.
    pub fn from_key(key: char) -> Option<Self> {
        match key {
            'c' => Some(SortKey::Cpu),
            'm' => Some(SortKey::Memory),
            'd' => Some(SortKey::Disk),
            'n' => Some(SortKey::Network),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortKey::Cpu => "CPU",
            SortKey::Memory => "memory",
            SortKey::Disk => "disk",
            SortKey::Network => "network",
        }
    }
}

/// Whether a task is still monitored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    /// Its final message came (with the reason it gave).
    Ended(Option<EndReason>),
    /// It left the agent's list without `top` seeing its final message.
    Gone,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Ended(_) => "ended",
            Status::Gone => "gone",
        }
    }
}

/// One task as `top` follows it.
#[derive(Clone, Debug)]
struct Tracked {
    latest: TaskMetricsMessage,
    /// The message seen before `latest`, for rates.
    previous: Option<TaskMetricsMessage>,
    status: Status,
    /// The refresh at which it ended or vanished.
    ended_at: Option<u64>,
}

impl Tracked {
    fn new(message: TaskMetricsMessage) -> Self {
        Tracked {
            status: Status::Running,
            latest: message,
            previous: None,
            ended_at: None,
        }
    }

    /// Seconds between the two messages, when both times are known and
    /// the later one is later.
    fn interval(&self) -> Option<f64> {
        let previous = self.previous.as_ref()?;
        let seconds = timestamp(&self.latest)?
            .duration_since(timestamp(previous)?)
            .ok()?
            .as_secs_f64();
        (seconds > 0.0).then_some(seconds)
    }

    /// Growth per second of a cumulative figure between the two messages.
    fn rate(&self, figure: impl Fn(&TaskMetricsMessage) -> Option<u64>) -> Option<f64> {
        let then = figure(self.previous.as_ref()?)?;
        let now = figure(&self.latest)?;
        Some(now.saturating_sub(then) as f64 / self.interval()?)
    }

    fn row(&self) -> Row {
        let metrics = &self.latest.metrics;
        // From the CPU time when two messages are known (the interval
        // `top` saw), else the message's own figure.
        let cpu_percent = self
            .rate(|m| m.metrics.cpu_time_ns)
            .map(|ns_per_second| ns_per_second / 1e7)
            .or(metrics.cpu_percent);
        Row {
            task_id: self.latest.task_id.clone(),
            status: self.status,
            cpu_percent,
            memory_bytes: metrics.memory_bytes,
            disk_read: self.rate(|m| m.metrics.disk_read_bytes),
            disk_write: self.rate(|m| m.metrics.disk_write_bytes),
            net_rx: self.rate(|m| m.metrics.network_rx_bytes),
            net_tx: self.rate(|m| m.metrics.network_tx_bytes),
            processes: metrics.process_count,
            threads: metrics.thread_count,
        }
    }
}

/// A message's time, if its timestamp parses.
fn timestamp(message: &TaskMetricsMessage) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(&message.timestamp).ok()
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub task_id: String,
    pub status: Status,
    /// 100 = one core busy.
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// Bytes per second over the last interval.
    pub disk_read: Option<f64>,
    pub disk_write: Option<f64>,
    pub net_rx: Option<f64>,
    pub net_tx: Option<f64>,
    pub processes: u64,
    pub threads: Option<u64>,
}

impl Row {
    /// The figure rows are ordered by; `None` (not collected, not known
    /// yet) sorts last.
    fn sort_value(&self, key: SortKey) -> Option<f64> {
        match key {
            SortKey::Cpu => self.cpu_percent,
            SortKey::Memory => self.memory_bytes.map(|bytes| bytes as f64),
            SortKey::Disk => sum(self.disk_read, self.disk_write),
            SortKey::Network => sum(self.net_rx, self.net_tx),
        }
    }
}

/// The sum of the figures that are known; `None` if neither is.
fn sum(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
    }
}

/// Every task `top` follows.
#[derive(Clone, Debug, Default)]
pub struct Board {
    tasks: BTreeMap<String, Tracked>,
    /// Updates applied so far.
    refreshes: u64,
}

impl Board {
    /// Messages as the engine sent them (standalone): each one counts,
    /// final messages included. One call is one refresh.
    pub fn record(&mut self, messages: impl IntoIterator<Item = TaskMetricsMessage>) {
        self.refreshes += 1;
        for message in messages {
            self.take(message);
        }
        self.prune();
    }

    /// The latest message of every task an agent monitors (its
    /// `/api/v1/tasks`): a running task missing from it has ended, its
    /// final message unseen. One call is one refresh.
    pub fn replace(&mut self, latest: Vec<TaskMetricsMessage>) {
        self.refreshes += 1;
        let listed: std::collections::BTreeSet<String> =
            latest.iter().map(|m| m.task_id.clone()).collect();
        for message in latest {
            self.take(message);
        }
        for (task_id, tracked) in &mut self.tasks {
            if tracked.status == Status::Running && !listed.contains(task_id) {
                tracked.status = Status::Gone;
                tracked.ended_at = Some(self.refreshes);
            }
        }
        self.prune();
    }

    fn take(&mut self, message: TaskMetricsMessage) {
        let status = if message.is_final {
            Status::Ended(message.end_reason)
        } else {
            Status::Running
        };
        let ended_at = (status != Status::Running).then_some(self.refreshes);
        let Some(tracked) = self.tasks.get_mut(&message.task_id) else {
            let mut tracked = Tracked::new(message);
            tracked.status = status;
            tracked.ended_at = ended_at;
            self.tasks.insert(tracked.latest.task_id.clone(), tracked);
            return;
        };
        match message.seq.cmp(&tracked.latest.seq) {
            // A new task under the id of one that ended.
            _ if tracked.status != Status::Running => *tracked = Tracked::new(message),
            // The same message, polled again.
            std::cmp::Ordering::Equal => return,
            std::cmp::Ordering::Greater => {
                tracked.previous = Some(std::mem::replace(&mut tracked.latest, message));
            }
            // Numbered from 1 again: a new task under the same id (or an
            // agent restarted without its state).
            std::cmp::Ordering::Less => *tracked = Tracked::new(message),
        }
        tracked.status = status;
        tracked.ended_at = ended_at;
    }

    /// Tasks that ended long enough ago leave the table.
    fn prune(&mut self) {
        let now = self.refreshes;
        self.tasks.retain(|_, tracked| {
            tracked
                .ended_at
                .is_none_or(|at| now.saturating_sub(at) < KEEP_ENDED)
        });
    }

    /// The rows, running tasks first, each group by `key`, largest first
    /// (then by task id).
    pub fn rows(&self, key: SortKey) -> Vec<Row> {
        let mut rows: Vec<Row> = self.tasks.values().map(Tracked::row).collect();
        rows.sort_by(|a, b| {
            let running = |row: &Row| row.status != Status::Running;
            running(a)
                .cmp(&running(b))
                .then_with(|| {
                    let (a, b) = (a.sort_value(key), b.sort_value(key));
                    match (a, b) {
                        (Some(a), Some(b)) => b.total_cmp(&a),
                        (a, b) => b.is_some().cmp(&a.is_some()),
                    }
                })
                .then_with(|| a.task_id.cmp(&b.task_id))
        });
        rows
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        let running = |t: &&Tracked| t.status == Status::Running;
        self.tasks.values().filter(running).count()
    }

    /// Everything `top` knows of one task.
    pub fn details(&self, task_id: &str) -> Option<TaskDetails> {
        let tracked = self.tasks.get(task_id)?;
        Some(TaskDetails::of(tracked))
    }
}

/// Bytes received and sent: totals, and rates over the last interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Flow {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_rate: Option<f64>,
    pub tx_rate: Option<f64>,
}

impl Flow {
    fn between(now: Traffic, then: Option<Traffic>, seconds: Option<f64>) -> Self {
        let rate = |now: u64, then: Option<u64>| {
            let seconds = seconds?;
            Some(now.saturating_sub(then?) as f64 / seconds)
        };
        Flow {
            rx_bytes: now.rx_bytes,
            tx_bytes: now.tx_bytes,
            rx_rate: rate(now.rx_bytes, then.map(|t| t.rx_bytes)),
            tx_rate: rate(now.tx_bytes, then.map(|t| t.tx_bytes)),
        }
    }

    /// Bytes per second both ways, for ordering.
    fn busy(&self) -> f64 {
        self.rx_rate.unwrap_or(0.0) + self.tx_rate.unwrap_or(0.0)
    }
}

/// A remote endpoint of the task, with rates.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerLine {
    pub peer: Peer,
    pub flow: Flow,
}

/// The rest of `/proc/<pid>/io`: cumulative, with rates.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskLine {
    pub details: crate::message::DiskDetails,
    /// Bytes per second passed to read-like and write-like calls.
    pub rchar_rate: Option<f64>,
    pub wchar_rate: Option<f64>,
}

/// One task's details view.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskDetails {
    pub row: Row,
    /// The task's latest message.
    pub message: TaskMetricsMessage,
    /// Seconds between the two messages the rates come from.
    pub interval: Option<f64>,
    pub disk: Option<DiskLine>,
    /// `tcp`, `udp`, `other`, `unix`, when the network is collected.
    pub protocols: Vec<(&'static str, Flow)>,
    pub tcp: Option<TcpTraffic>,
    /// Busiest first; the `"other"` entry (every peer beyond the busiest)
    /// last.
    pub peers: Vec<PeerLine>,
}

impl TaskDetails {
    fn of(tracked: &Tracked) -> Self {
        let latest = &tracked.latest;
        let previous = tracked.previous.as_ref();
        let seconds = tracked.interval();
        let network = latest.details.network.as_ref();
        let before = previous.and_then(|m| m.details.network.as_ref());
        let protocols = network
            .map(|now| {
                let pick = |n: &crate::message::NetworkDetails, p: &str| match p {
                    "tcp" => n.tcp.traffic(),
                    "udp" => n.udp,
                    "other" => n.other,
                    _ => n.unix,
                };
                ["tcp", "udp", "other", "unix"]
                    .into_iter()
                    .map(|p| {
                        (
                            p,
                            Flow::between(pick(now, p), before.map(|b| pick(b, p)), seconds),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut peers: Vec<PeerLine> = network
            .map(|now| {
                now.peers
                    .iter()
                    .map(|peer| {
                        let then = before.and_then(|b| same_peer(&b.peers, peer));
                        PeerLine {
                            peer: peer.clone(),
                            flow: Flow::between(traffic(peer), then.map(traffic), seconds),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        peers.sort_by(|a, b| {
            let rest = |line: &PeerLine| line.peer.protocol.is_none() && line.peer.peer == "other";
            rest(a)
                .cmp(&rest(b))
                .then_with(|| b.flow.busy().total_cmp(&a.flow.busy()))
                .then_with(|| {
                    let total = |l: &PeerLine| l.flow.rx_bytes.saturating_add(l.flow.tx_bytes);
                    total(b).cmp(&total(a))
                })
        });
        let disk = latest.details.disk.clone().map(|details| {
            let then = previous.and_then(|m| m.details.disk.as_ref());
            let rate =
                |now: u64, then: Option<u64>| Some(now.saturating_sub(then?) as f64 / seconds?);
            DiskLine {
                rchar_rate: rate(details.rchar, then.map(|d| d.rchar)),
                wchar_rate: rate(details.wchar, then.map(|d| d.wchar)),
                details,
            }
        });
        TaskDetails {
            row: tracked.row(),
            message: latest.clone(),
            interval: seconds,
            disk,
            protocols,
            tcp: network.map(|n| n.tcp),
            peers,
        }
    }
}

fn traffic(peer: &Peer) -> Traffic {
    Traffic {
        rx_bytes: peer.rx_bytes,
        tx_bytes: peer.tx_bytes,
    }
}

/// The same endpoint in an earlier message.
fn same_peer<'a>(peers: &'a [Peer], wanted: &Peer) -> Option<&'a Peer> {
    peers
        .iter()
        .find(|p| p.peer == wanted.peer && p.protocol == wanted.protocol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Details, NetworkDetails, Source, TaskMetrics};

    /// A message of task `id` at second `at` of a minute.
    fn message(id: &str, seq: u64, at: u32, cpu_ns: u64) -> TaskMetricsMessage {
        let timestamp = format!("2026-01-01T00:00:{at:02}.000Z");
        TaskMetricsMessage {
            task_id: id.into(),
            proplet_id: "edge".into(),
            metrics: TaskMetrics {
                cpu_percent: Some(12.0),
                cpu_time_ns: Some(cpu_ns),
                memory_bytes: Some(1 << 20),
                disk_read_bytes: Some(0),
                disk_write_bytes: Some(0),
                network_rx_bytes: Some(0),
                network_tx_bytes: Some(0),
                process_count: 1,
                thread_count: Some(1),
                timestamp: timestamp.clone(),
                ..Default::default()
            },
            aggregated: None,
            details: Details::default(),
            timestamp,
            source: Source::Ebpf,
            seq,
            is_final: false,
            end_reason: None,
            attribution: None,
        }
    }

    #[test]
    fn rates_are_growth_over_the_time_between_two_messages() {
        let mut board = Board::default();
        let first = message("t", 1, 10, 1_000_000_000);
        board.record([first.clone()]);
        let row = &board.rows(SortKey::Cpu)[0];
        // One message: the message's own CPU figure, no rates yet.
        assert_eq!(row.cpu_percent, Some(12.0));
        assert_eq!(row.disk_read, None);

        let mut second = message("t", 2, 12, 2_500_000_000);
        second.metrics.disk_read_bytes = Some(4 << 20);
        second.metrics.disk_write_bytes = Some(1000);
        second.metrics.network_rx_bytes = Some(300);
        second.metrics.network_tx_bytes = Some(100);
        board.record([second]);
        let row = &board.rows(SortKey::Cpu)[0];
        // 1.5 s of CPU over 2 s: 75% of one core.
        assert_eq!(row.cpu_percent, Some(75.0));
        assert_eq!(row.disk_read, Some(2.0 * 1024.0 * 1024.0));
        assert_eq!(row.disk_write, Some(500.0));
        assert_eq!((row.net_rx, row.net_tx), (Some(150.0), Some(50.0)));
    }

    #[test]
    fn figures_that_are_not_collected_stay_unknown() {
        let mut board = Board::default();
        let mut first = message("t", 1, 10, 0);
        first.metrics.disk_read_bytes = None;
        let mut second = message("t", 2, 11, 0);
        second.metrics.disk_read_bytes = None;
        second.timestamp = "not a time".into();
        board.record([first, second]);
        let row = &board.rows(SortKey::Disk)[0];
        assert_eq!(row.disk_read, None);
        // A timestamp that does not parse gives no rates, and no panic.
        assert_eq!(row.net_rx, None);
        assert_eq!(row.cpu_percent, Some(12.0));
    }

    #[test]
    fn rows_sort_by_the_chosen_key_largest_first() {
        let mut board = Board::default();
        let mut busy = message("busy", 1, 0, 0);
        busy.metrics.cpu_percent = Some(90.0);
        let mut big = message("big", 1, 0, 0);
        big.metrics.memory_bytes = Some(1 << 30);
        let mut unknown = message("unknown", 1, 0, 0);
        unknown.metrics.cpu_percent = None;
        unknown.metrics.cpu_time_ns = None;
        board.record([busy, big, unknown, message("a-quiet", 1, 0, 0)]);
        let order =
            |key| -> Vec<String> { board.rows(key).into_iter().map(|r| r.task_id).collect() };
        assert_eq!(order(SortKey::Cpu), ["busy", "a-quiet", "big", "unknown"]);
        assert_eq!(order(SortKey::Memory)[0], "big");
        for key in ['c', 'm', 'd', 'n'] {
            assert!(SortKey::from_key(key).is_some());
        }
        assert_eq!(SortKey::from_key('x'), None);
    }

    #[test]
    fn a_task_that_ended_stays_a_while_marked_and_last() {
        let mut board = Board::default();
        board.record([message("a", 1, 0, 0), message("b", 1, 0, 0)]);
        let mut last = message("a", 2, 1, 0);
        last.is_final = true;
        last.end_reason = Some(EndReason::Exited);
        last.metrics.cpu_percent = Some(99.0);
        board.record([last]);
        let rows = board.rows(SortKey::Cpu);
        assert_eq!(rows[1].task_id, "a", "ended tasks go last");
        assert_eq!(rows[1].status, Status::Ended(Some(EndReason::Exited)));
        assert_eq!(board.running(), 1);
        for seq in 2..2 + KEEP_ENDED {
            assert_eq!(board.len(), 2);
            board.record([message("b", seq, seq as u32, 0)]);
        }
        assert_eq!(board.len(), 1, "gone after {KEEP_ENDED} refreshes");
    }

    #[test]
    fn a_task_missing_from_the_agents_list_is_gone() {
        let mut board = Board::default();
        board.replace(vec![message("a", 1, 0, 0), message("b", 1, 0, 0)]);
        // The same message polled again changes nothing.
        board.replace(vec![message("a", 1, 0, 0), message("b", 2, 1, 0)]);
        assert!(board.details("a").unwrap().interval.is_none());
        board.replace(vec![message("b", 3, 2, 0)]);
        let a = board.details("a").unwrap();
        assert_eq!(a.row.status, Status::Gone);
        // A new task under the same id starts afresh.
        board.replace(vec![message("a", 1, 5, 0), message("b", 4, 3, 0)]);
        assert_eq!(board.details("a").unwrap().row.status, Status::Running);
        assert!(board.details("missing").is_none());
    }

    #[test]
    fn details_give_protocols_and_peers_with_rates() {
        let peer = |name: &str, protocol: Option<&str>, rx: u64| Peer {
            peer: name.into(),
            protocol: protocol.map(Into::into),
            rx_bytes: rx,
            tx_bytes: 0,
            connections_opened: 1,
            connections_closed: 0,
            connections_open: 1,
            retransmits: None,
        };
        let network = |tcp_rx: u64, peers: Vec<Peer>| NetworkDetails {
            tcp: TcpTraffic {
                rx_bytes: tcp_rx,
                retransmits: Some(3),
                ..Default::default()
            },
            peers,
            ..Default::default()
        };
        let mut first = message("t", 1, 0, 0);
        first.details.network = Some(network(
            100,
            vec![
                peer("other", None, 0),
                peer("192.0.2.2:80", Some("tcp"), 50),
                peer("192.0.2.3:53", Some("udp"), 50),
            ],
        ));
        let mut second = message("t", 2, 2, 0);
        second.details.network = Some(network(
            2100,
            vec![
                peer("other", None, 1000),
                peer("192.0.2.2:80", Some("tcp"), 50),
                peer("192.0.2.3:53", Some("udp"), 2050),
            ],
        ));
        let mut board = Board::default();
        board.record([first, second]);
        let details = board.details("t").unwrap();
        assert_eq!(details.interval, Some(2.0));
        let (name, tcp) = &details.protocols[0];
        assert_eq!((*name, tcp.rx_rate), ("tcp", Some(1000.0)));
        assert_eq!(details.protocols.len(), 4);
        assert_eq!(details.tcp.unwrap().retransmits, Some(3));
        let order: Vec<&str> = details.peers.iter().map(|p| p.peer.peer.as_str()).collect();
        assert_eq!(order, ["192.0.2.3:53", "192.0.2.2:80", "other"]);
        assert_eq!(details.peers[0].flow.rx_rate, Some(1000.0));
        assert_eq!(details.peers[1].flow.rx_rate, Some(0.0));
    }

    #[test]
    fn a_task_without_network_details_has_no_protocols() {
        let mut board = Board::default();
        board.record([message("t", 1, 0, 0)]);
        let details = board.details("t").unwrap();
        assert!(details.protocols.is_empty() && details.peers.is_empty());
        assert!(details.tcp.is_none() && details.disk.is_none());
    }
}
