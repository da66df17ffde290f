//! Monitored tasks: identity, profile, kernel slot, sampling state, history.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use monitor_common::NetBucket;

use crate::{
    collect::{
        self, NetTotals, PeerId, PeerTotals, ProcessSample, TaskTotals,
        cgroup::{Cgroup, ContainerMemory},
    },
    history::{History, Sample},
    message::{
        self, Details, DiskDetails, EndReason, NetworkDetails, Peer, Source, TaskMetrics,
        TaskMetricsMessage, TcpTraffic, Traffic,
    },
    profiles::MonitoringProfile,
};

/// Who a task is: the ids that go into every message, and its profile.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub task_id: String,
    pub proplet_id: String,
    pub profile: MonitoringProfile,
    /// How the task's processes are found, reported as `attribution` when
    /// it is not the task's own processes.
    pub attribution: Option<String>,
    /// The cgroup that defines the task (`--attach-cgroup`): its
    /// processes, whichever they are; the task does not end when it has
    /// none.
    pub cgroup: Option<Cgroup>,
}

/// One monitored task and what its next message is computed from.
#[derive(Debug)]
pub struct Task {
    pub spec: TaskSpec,
    /// Index of the task's counters in the backend.
    pub slot: u32,
    started: Instant,
    seq: u64,
    /// When the next message is due.
    pub next_due: Instant,
    /// The previous sample's time and cumulative totals.
    previous: (Instant, TaskTotals),
    history: History,
    /// Since when the task has had no live process (waiting for the
    /// kernel to release its threads).
    pub processes_gone_since: Option<Instant>,
    /// Registered, but its process has not appeared yet (exec discovery).
    pub awaiting_discovery: bool,
    /// A process of the task exited: look at it every round until its
    /// threads are released or a process is alive again.
    pub ending: bool,
    /// Totals of a shared slot when this task began (in-process tasks).
    baseline: Option<TaskTotals>,
}

/// A task as a previous agent left it.
#[derive(Clone, Debug)]
pub struct Resumed {
    pub spec: TaskSpec,
    pub slot: u32,
    pub started: Instant,
    pub seq: u64,
    /// What the next message's rates and growths are computed from: the
    /// last message's time and CPU total, and for the other figures their
    /// totals at the resumption (the aggregates' window starts over).
    pub previous: (Instant, TaskTotals),
    pub awaiting_discovery: bool,
    pub baseline: Option<TaskTotals>,
    pub next_due: Instant,
}

/// Everything measured about a task at one instant.
#[derive(Clone, Debug)]
pub struct Observation {
    pub totals: TaskTotals,
    pub processes: ProcessSample,
    /// The task's peers, when the backend tells them apart.
    pub peers: Vec<PeerTotals>,
    pub host_memory_bytes: u64,
    /// The memory figures of the task's cgroup, for a task defined by one.
    pub container: Option<ContainerMemory>,
    pub at: Instant,
    /// `at` on the wall clock, as messages print it (RFC 3339).
    pub timestamp: String,
}

impl Task {
    /// A task started at `started`, first due at `next_due`.
    pub fn new(spec: TaskSpec, slot: u32, started: Instant, next_due: Instant) -> Self {
        let history = History::new(spec.profile.history_capacity());
        Task {
            spec,
            slot,
            started,
            seq: 0,
            next_due,
            previous: (started, TaskTotals::default()),
            history,
            processes_gone_since: None,
            awaiting_discovery: false,
            ending: false,
            baseline: None,
        }
    }

    /// Reports only what the slot counts from now on.
    pub fn set_baseline(&mut self, baseline: TaskTotals) {
        self.baseline = Some(baseline);
    }

    /// Takes up a task a previous agent monitored: its messages go on
    /// numbering from where they were; its history starts over.
    pub fn resume(resumed: Resumed) -> Self {
        let mut task = Task::new(
            resumed.spec,
            resumed.slot,
            resumed.started,
            resumed.next_due,
        );
        task.seq = resumed.seq;
        task.awaiting_discovery = resumed.awaiting_discovery;
        task.baseline = resumed.baseline;
        // The first look decides whether its processes are still alive;
        // a cgroup's task outlives them, and is never looked at so.
        task.ending = !resumed.awaiting_discovery && task.spec.cgroup.is_none();
        task.previous = resumed.previous;
        task
    }

    /// When the task started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Totals of the shared slot when the task began, if it shares one.
    pub fn baseline(&self) -> Option<TaskTotals> {
        self.baseline
    }

    /// The CPU total of the last message.
    pub fn last_cpu_ns(&self) -> u64 {
        self.previous.1.cpu_ns
    }

    /// A task whose process is yet to appear: nothing is due until then.
    pub fn awaiting(spec: TaskSpec, slot: u32, now: Instant) -> Self {
        let mut task = Task::new(spec, slot, now, now);
        task.awaiting_discovery = true;
        task
    }

    /// How long the task has been waiting for its process.
    pub fn waiting_since(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Its process appeared at `at`: the task's clock starts then.
    pub fn discovered(&mut self, at: Instant, next_due: Instant) {
        self.awaiting_discovery = false;
        // Its process may be gone already (it exec'd before the task was
        // announced): look at it in the next round.
        self.ending = true;
        self.started = at;
        self.previous = (at, TaskTotals::default());
        self.next_due = next_due;
    }

    /// Moves `next_due` to the first point of the task's grid after `now`
    /// (a late round skips the missed ones rather than bursting).
    pub fn schedule_after(&mut self, origin: Instant, now: Instant) {
        self.next_due = grid_after(origin, self.spec.profile.interval, now);
    }

    /// The task's next message, with uncollected or unknown figures
    /// omitted; final (with its reason) when `end` is given.
    pub fn next_message(
        &mut self,
        observation: &Observation,
        source: Source,
        end: Option<EndReason>,
    ) -> TaskMetricsMessage {
        let profile = &self.spec.profile;
        let (previous_at, previous) = self.previous;
        let totals = match &self.baseline {
            Some(baseline) => observation.totals.since(baseline),
            None => observation.totals,
        };
        let elapsed = observation.at.saturating_duration_since(previous_at);
        self.previous = (observation.at, totals);
        self.seq += 1;

        let processes = &observation.processes;
        let cpu_percent = profile
            .collect_cpu
            .then(|| message::cpu_percent(totals.cpu_ns.saturating_sub(previous.cpu_ns), elapsed));
        let memory_bytes = profile.collect_memory.then_some(processes.memory_bytes);
        let disk = totals.disk.filter(|_| profile.collect_disk_io);
        let net = totals.net.filter(|_| profile.collect_network_io);
        let growth =
            |now: Option<u64>, before: Option<u64>| Some(now?.saturating_sub(before.unwrap_or(0)));
        self.history.push(Sample {
            cpu_percent,
            memory_bytes,
            disk_read: growth(
                disk.map(|d| d.read_bytes),
                previous.disk.map(|d| d.read_bytes),
            ),
            disk_write: growth(
                disk.map(|d| d.write_bytes),
                previous.disk.map(|d| d.write_bytes),
            ),
            network_rx: growth(net.map(|n| n.inet_rx()), previous.net.map(|n| n.inet_rx())),
            network_tx: growth(net.map(|n| n.inet_tx()), previous.net.map(|n| n.inet_tx())),
        });

        let timestamp = observation.timestamp.clone();
        let metrics = TaskMetrics {
            cpu_percent,
            cpu_time_ns: profile.collect_cpu.then_some(totals.cpu_ns),
            memory_bytes,
            memory_percent: memory_bytes
                .map(|bytes| message::percent(bytes as f64, observation.host_memory_bytes as f64)),
            disk_read_bytes: disk.map(|d| d.read_bytes),
            disk_write_bytes: disk.map(|d| d.write_bytes),
            network_rx_bytes: net.map(|n| n.inet_rx()),
            network_tx_bytes: net.map(|n| n.inet_tx()),
            uptime_seconds: uptime(self.started, observation.at).as_secs(),
            thread_count: counted(processes.threads, processes).filter(|_| profile.collect_threads),
            file_descriptor_count: counted(processes.file_descriptors, processes)
                .filter(|_| profile.collect_file_descriptors),
            process_count: processes.processes,
            processes_started: totals.processes_started,
            container_usage_bytes: observation.container.and_then(|c| c.usage_bytes),
            container_limit_bytes: observation.container.and_then(|c| c.limit_bytes),
            timestamp: timestamp.clone(),
        };
        let details = Details {
            disk: disk.and_then(|d| d.details).map(disk_details),
            network: net.map(|n| {
                let peers = match self.baseline {
                    // In-process tasks: the proplet's peers are not theirs.
                    Some(_) => &[][..],
                    None => &observation.peers[..],
                };
                network_details(&n, peers, profile.max_peers)
            }),
        };
        TaskMetricsMessage {
            task_id: self.spec.task_id.clone(),
            proplet_id: self.spec.proplet_id.clone(),
            metrics,
            aggregated: self.history.aggregate(),
            details,
            timestamp,
            source,
            seq: self.seq,
            is_final: end.is_some(),
            end_reason: end,
            attribution: self.spec.attribution.clone(),
        }
    }

    /// Messages sent so far (the last `seq`).
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

fn disk_details(disk: collect::DiskDetails) -> DiskDetails {
    DiskDetails {
        cancelled_write_bytes: disk.cancelled_write_bytes,
        rchar: disk.rchar,
        wchar: disk.wchar,
        syscr: disk.syscr,
        syscw: disk.syscw,
    }
}

fn network_details(net: &NetTotals, peers: &[PeerTotals], max_peers: usize) -> NetworkDetails {
    let traffic = |bucket| {
        let (rx_bytes, tx_bytes) = net.bucket(bucket);
        Traffic { rx_bytes, tx_bytes }
    };
    let tcp = traffic(NetBucket::Tcp);
    NetworkDetails {
        tcp: TcpTraffic {
            rx_bytes: tcp.rx_bytes,
            tx_bytes: tcp.tx_bytes,
            retransmits: net.tcp.map(|h| h.retransmits),
            failed_connections: net.tcp.map(|h| h.failed_connections),
            resets_received: net.tcp.map(|h| h.resets_received),
        },
        udp: traffic(NetBucket::Udp),
        other: traffic(NetBucket::Other),
        unix: traffic(NetBucket::Unix),
        peers: busiest_peers(net, peers, max_peers),
    }
}

/// The `max_peers` busiest peers by bytes, then one `other` entry with the
/// rest (unlisted figures included), so that the entries add up to the
/// task's AF_INET/AF_INET6 totals. Empty when the backend lists no peer.
fn busiest_peers(net: &NetTotals, peers: &[PeerTotals], max_peers: usize) -> Vec<Peer> {
    if peers.is_empty() {
        return Vec::new();
    }
    let mut listed: Vec<&PeerTotals> = peers
        .iter()
        .filter(|peer| peer.peer != PeerId::Unlisted)
        .collect();
    listed.sort_by_key(|peer| (std::cmp::Reverse(peer.rx_bytes + peer.tx_bytes), peer.peer));
    let shown = listed.len().min(max_peers);
    let mut entries: Vec<Peer> = listed[..shown]
        .iter()
        .map(|peer| peer_entry(peer))
        .collect();
    let mut rest = Peer {
        peer: "other".to_owned(),
        rx_bytes: net.inet_rx(),
        tx_bytes: net.inet_tx(),
        ..Peer::default()
    };
    for entry in &entries {
        rest.rx_bytes = rest.rx_bytes.saturating_sub(entry.rx_bytes);
        rest.tx_bytes = rest.tx_bytes.saturating_sub(entry.tx_bytes);
    }
    let others = listed[shown..]
        .iter()
        .copied()
        .chain(peers.iter().filter(|peer| peer.peer == PeerId::Unlisted));
    for peer in others {
        rest.connections_opened += peer.connections_opened;
        rest.connections_closed += peer.connections_closed;
        *rest.retransmits.get_or_insert(0) += peer.retransmits;
    }
    rest.connections_open = rest
        .connections_opened
        .saturating_sub(rest.connections_closed);
    if rest.rx_bytes + rest.tx_bytes + rest.connections_opened > 0 || entries.is_empty() {
        entries.push(rest);
    }
    entries
}

fn peer_entry(peer: &PeerTotals) -> Peer {
    let protocol = match peer.protocol {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP | IPPROTO_UDPLITE => "udp",
        _ => "other",
    };
    Peer {
        peer: match peer.peer {
            PeerId::Endpoint(address) => address.to_string(),
            PeerId::Unconnected => "unconnected".to_owned(),
            PeerId::Unlisted => "other".to_owned(),
        },
        protocol: Some(protocol.to_owned()),
        rx_bytes: peer.rx_bytes,
        tx_bytes: peer.tx_bytes,
        connections_opened: peer.connections_opened,
        connections_closed: peer.connections_closed,
        connections_open: peer
            .connections_opened
            .saturating_sub(peer.connections_closed),
        retransmits: (peer.protocol == IPPROTO_TCP).then_some(peer.retransmits),
    }
}

/// IPPROTO_* (uapi/linux/in.h).
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
const IPPROTO_UDPLITE: u16 = 136;

/// Threads and descriptors are counted wherever `/proc` lists them.
const COUNTS_THREADS_AND_FDS: bool = cfg!(target_os = "linux");

/// A point-in-time count summed over the task's live processes: 0 when none
/// is alive (a final message), so that every message of a task has the same
/// fields; `None` only where the OS cannot count it at all.
fn counted(sum: Option<u64>, processes: &ProcessSample) -> Option<u64> {
    let nothing_alive = processes.processes == 0 && COUNTS_THREADS_AND_FDS;
    sum.or(nothing_alive.then_some(0))
}

fn uptime(started: Instant, now: Instant) -> Duration {
    now.saturating_duration_since(started)
}

/// The first point of the grid `origin + k * interval` after `now`.
pub fn grid_after(origin: Instant, interval: Duration, now: Instant) -> Instant {
    let interval_ns = interval.as_nanos().max(1);
    let elapsed = now.saturating_duration_since(origin).as_nanos();
    let steps = elapsed / interval_ns + 1;
    let offset = interval_ns.saturating_mul(steps);
    origin + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// Hands out task slots. A freed slot is reused last and oldest first,
/// so that a hook still finishing with a slot's previous task (the kernel
/// forgets it at once, but a program may be mid-run) is long done.
#[derive(Debug)]
pub struct SlotAllocator {
    capacity: u32,
    next_unused: u32,
    /// Freed slots, oldest first.
    freed: VecDeque<u32>,
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
            freed: VecDeque::new(),
        }
    }

    pub fn allocate(&mut self) -> Result<u32, SlotsExhausted> {
        if self.next_unused < self.capacity {
            self.next_unused += 1;
            return Ok(self.next_unused - 1);
        }
        self.freed.pop_front().ok_or(SlotsExhausted {
            capacity: self.capacity,
        })
    }

    pub fn free(&mut self, slot: u32) {
        debug_assert!(slot < self.next_unused && !self.freed.contains(&slot));
        self.freed.push_back(slot);
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots allocated and not freed.
    pub fn in_use(&self) -> u32 {
        self.next_unused - self.freed.len() as u32
    }

    /// Marks `slot` as taken (a task resumed from a previous agent).
    pub fn take(&mut self, slot: u32) {
        while self.next_unused <= slot && self.next_unused < self.capacity {
            self.freed.push_back(self.next_unused);
            self.next_unused += 1;
        }
        self.freed.retain(|free| *free != slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{collect::DiskTotals, profiles::Preset};
    use std::time::SystemTime;

    fn task(preset: Preset, started: Instant) -> Task {
        let spec = TaskSpec {
            task_id: "task".into(),
            proplet_id: "proplet".into(),
            profile: preset.profile(),
            attribution: None,
            cgroup: None,
        };
        let next_due = started + spec.profile.interval;
        Task::new(spec, 3, started, next_due)
    }

    fn totals(cpu_ns: u64, scale: u64) -> TaskTotals {
        TaskTotals {
            cpu_ns,
            live_processes: 2,
            live_threads: 5,
            processes_started: Some(9),
            disk: Some(DiskTotals {
                read_bytes: 100 * scale,
                write_bytes: 23 * scale,
                details: Some(collect::DiskDetails {
                    cancelled_write_bytes: scale,
                    rchar: 500 * scale,
                    wchar: 70 * scale,
                    syscr: 9 * scale,
                    syscw: 7 * scale,
                }),
            }),
            net: Some(NetTotals {
                tx: [1, 2, 4, 1000].map(|n| n * scale),
                rx: [10, 20, 40, 2000].map(|n| n * scale),
                tcp: None,
            }),
        }
    }

    fn observation(at: Instant, totals: TaskTotals) -> Observation {
        Observation {
            totals,
            processes: ProcessSample {
                memory_bytes: 1 << 30,
                threads: Some(5),
                file_descriptors: Some(12),
                processes: 2,
            },
            host_memory_bytes: 4 << 30,
            container: None,
            at,
            timestamp: message::rfc3339(SystemTime::UNIX_EPOCH),
            peers: Vec::new(),
        }
    }

    fn peer(port: u16, protocol: u16, tx: u64, rx: u64, opened: u64) -> PeerTotals {
        PeerTotals {
            peer: PeerId::Endpoint(std::net::SocketAddr::from(([192, 0, 2, 2], port))),
            protocol,
            tx_bytes: tx,
            rx_bytes: rx,
            connections_opened: opened,
            connections_closed: opened.saturating_sub(1),
            retransmits: port.into(),
        }
    }

    #[test]
    fn busiest_peers_are_listed_and_the_rest_adds_up_to_the_totals() {
        let peers = [
            peer(1, IPPROTO_TCP, 10, 0, 1),
            peer(2, IPPROTO_TCP, 500, 20, 3),
            peer(3, IPPROTO_UDP, 0, 300, 0),
            peer(4, IPPROTO_TCP, 40, 40, 2),
            PeerTotals {
                peer: PeerId::Unconnected,
                protocol: IPPROTO_UDP,
                tx_bytes: 7,
                ..PeerTotals::default()
            },
            PeerTotals {
                peer: PeerId::Unlisted,
                tx_bytes: 1000,
                rx_bytes: 1,
                connections_opened: 5,
                connections_closed: 5,
                retransmits: 9,
                ..PeerTotals::default()
            },
        ];
        let tx: u64 = peers.iter().map(|p| p.tx_bytes).sum();
        let rx: u64 = peers.iter().map(|p| p.rx_bytes).sum();
        let net = NetTotals {
            tx: [tx - 100, 100, 0, 123],
            rx: [rx, 0, 0, 456],
            tcp: None,
        };
        let listed = busiest_peers(&net, &peers, 2);
        let names: Vec<&str> = listed.iter().map(|p| p.peer.as_str()).collect();
        assert_eq!(names, ["192.0.2.2:2", "192.0.2.2:3", "other"]);
        assert_eq!(listed[1].protocol.as_deref(), Some("udp"));
        assert_eq!(listed[1].retransmits, None, "UDP has no retransmissions");
        assert_eq!(listed.iter().map(|p| p.tx_bytes).sum::<u64>(), tx);
        assert_eq!(listed.iter().map(|p| p.rx_bytes).sum::<u64>(), rx);
        let other = &listed[2];
        assert_eq!(other.tx_bytes, 10 + 40 + 7 + 1000);
        assert_eq!(other.connections_opened, 1 + 2 + 5);
        assert_eq!(other.connections_open, 2, "one of peer 1's, one of 4's");
        assert_eq!(other.retransmits, Some(1 + 4 + 9));
        assert!(busiest_peers(&net, &[], 2).is_empty(), "no peers listed");
        let all = busiest_peers(&net, &peers[..5], 16);
        assert_eq!(all.last().unwrap().peer, "other", "the splice-only rest");
        assert_eq!(all.iter().map(|p| p.tx_bytes).sum::<u64>(), tx);
    }

    #[test]
    fn cpu_percent_covers_the_interval_since_the_previous_message() {
        let t0 = Instant::now();
        let mut task = task(Preset::Intensive, t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        let first = task.next_message(
            &observation(at(1000), totals(900_000_000, 1)),
            Source::Ebpf,
            None,
        );
        assert_eq!(first.seq, 1);
        assert_eq!(first.metrics.cpu_percent, Some(90.0));
        assert_eq!(first.metrics.cpu_time_ns, Some(900_000_000));
        let second = task.next_message(
            &observation(at(1500), totals(1_900_000_000, 1)),
            Source::Ebpf,
            Some(EndReason::Exited),
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
        let message = task.next_message(&observation(t0, totals(0, 1)), Source::Ebpf, None);
        assert_eq!(message.metrics.disk_read_bytes, Some(100));
        assert_eq!(message.metrics.disk_write_bytes, Some(23));
        assert_eq!(message.metrics.network_tx_bytes, Some(7));
        assert_eq!(message.metrics.network_rx_bytes, Some(70));
        let network = message.details.network.unwrap();
        assert_eq!(network.unix.tx_bytes, 1000);
        assert_eq!(network.other.rx_bytes, 40);
        let disk = message.details.disk.unwrap();
        assert_eq!(disk.cancelled_write_bytes, 1);
        assert_eq!(disk.syscw, 7);
        assert_eq!(disk.rchar, 500);
    }

    #[test]
    fn aggregates_sum_growth_over_the_window() {
        let t0 = Instant::now();
        let mut task = task(Preset::Intensive, t0);
        for (second, scale) in [(1, 1), (2, 3), (3, 6)] {
            task.next_message(
                &observation(t0 + Duration::from_secs(second), totals(0, scale)),
                Source::Ebpf,
                None,
            );
        }
        let last = task.next_message(
            &observation(t0 + Duration::from_secs(4), totals(0, 10)),
            Source::Ebpf,
            None,
        );
        let aggregated = last.aggregated.unwrap();
        assert_eq!(aggregated.sample_count, 4);
        // Growth 100 + 200 + 300 + 400 = the cumulative 1000.
        assert_eq!(aggregated.total_disk_read, Some(1000));
        assert_eq!(aggregated.total_network_tx, Some(70));
        assert_eq!(aggregated.max_memory_usage, Some(1 << 30));
    }

    #[test]
    fn profiles_without_disk_or_network_omit_them_and_their_details() {
        let t0 = Instant::now();
        let mut task = task(Preset::RealTimeApi, t0);
        let message = task.next_message(&observation(t0, totals(0, 1)), Source::Ebpf, None);
        assert_eq!(message.metrics.disk_read_bytes, None);
        assert!(message.details.disk.is_none());
        assert!(message.details.network.is_some());
        let mut task = self::task(Preset::Minimal, t0);
        let message = task.next_message(&observation(t0, totals(0, 1)), Source::Ebpf, None);
        let json = serde_json::to_value(message).unwrap();
        assert!(json.get("details").is_none(), "{json}");
        assert!(json["metrics"].get("network_rx_bytes").is_none());
        assert!(json["metrics"].get("thread_count").is_none());
        assert_eq!(
            json["aggregated"],
            serde_json::Value::Null,
            "minimal keeps no history"
        );
    }

    #[test]
    fn figures_a_backend_cannot_know_are_omitted() {
        let t0 = Instant::now();
        let mut task = task(Preset::Intensive, t0);
        let mut blind = totals(0, 1);
        blind.net = None;
        blind.processes_started = None;
        let json =
            serde_json::to_value(task.next_message(&observation(t0, blind), Source::Sysinfo, None))
                .unwrap();
        assert!(json["metrics"].get("network_tx_bytes").is_none(), "{json}");
        assert!(json["metrics"].get("processes_started").is_none(), "{json}");
        assert_eq!(json["source"], "sysinfo");
    }

    /// Issue 10, item 14: the final message has the shape of the others,
    /// with 0 for the counts of a task whose processes are gone.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_final_message_keeps_every_collected_field() {
        let t0 = Instant::now();
        let mut task = task(Preset::Intensive, t0);
        let running = task.next_message(&observation(t0, totals(0, 1)), Source::Ebpf, None);
        let mut gone = observation(t0 + Duration::from_secs(1), totals(0, 2));
        gone.totals.live_processes = 0;
        gone.processes = ProcessSample::default();
        let last = task.next_message(&gone, Source::Ebpf, Some(EndReason::Exited));
        let fields = |message: &TaskMetricsMessage| {
            let json = serde_json::to_value(&message.metrics).unwrap();
            json.as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(&last), fields(&running));
        assert_eq!(last.metrics.thread_count, Some(0));
        assert_eq!(last.metrics.file_descriptor_count, Some(0));
        assert_eq!(last.metrics.memory_bytes, Some(0));
        let mut task = self::task(Preset::Minimal, t0);
        let last = task.next_message(&gone, Source::Ebpf, Some(EndReason::Exited));
        assert_eq!(last.metrics.thread_count, None, "not collected");
    }

    /// Tasks defined by a cgroup carry its memory figures, each omitted
    /// where the cgroup has none (no memory controller, `max`).
    #[test]
    fn container_memory_appears_only_where_the_cgroup_has_it() {
        let t0 = Instant::now();
        let mut task = task(Preset::Intensive, t0);
        let mut seen = observation(t0, totals(0, 1));
        seen.container = Some(ContainerMemory {
            usage_bytes: Some(5 << 20),
            limit_bytes: None,
        });
        let json = serde_json::to_value(task.next_message(&seen, Source::Ebpf, None)).unwrap();
        assert_eq!(json["metrics"]["container_usage_bytes"], 5 << 20);
        assert!(
            json["metrics"].get("container_limit_bytes").is_none(),
            "{json}"
        );
        let plain = task.next_message(&observation(t0, totals(0, 1)), Source::Ebpf, None);
        let json = serde_json::to_value(plain).unwrap();
        assert!(
            json["metrics"].get("container_usage_bytes").is_none(),
            "{json}"
        );
    }

    /// A resumed cgroup task is not taken for one whose processes may
    /// have exited (which would have the engine poll it every 20 ms).
    #[test]
    fn a_resumed_cgroup_task_is_not_ending() {
        let t0 = Instant::now();
        let mut spec = task(Preset::Intensive, t0).spec;
        let resumed = |spec: TaskSpec| Resumed {
            spec,
            slot: 3,
            started: t0,
            seq: 5,
            previous: (t0, TaskTotals::default()),
            awaiting_discovery: false,
            baseline: None,
            next_due: t0,
        };
        assert!(Task::resume(resumed(spec.clone())).ending);
        spec.cgroup = Some(Cgroup {
            dir: "/sys/fs/cgroup/unified/db.service".into(),
            path: "/db.service".into(),
            id: 42,
        });
        assert!(!Task::resume(resumed(spec)).ending);
    }

    #[test]
    fn schedule_skips_missed_rounds() {
        let t0 = Instant::now();
        let mut task = task(Preset::Intensive, t0);
        task.schedule_after(t0, t0 + Duration::from_millis(3500));
        assert_eq!(task.next_due, t0 + Duration::from_secs(4));
    }

    #[test]
    fn slots_are_reused_last_and_oldest_first() {
        let mut slots = SlotAllocator::new(3);
        assert_eq!(slots.allocate(), Ok(0));
        assert_eq!(slots.allocate(), Ok(1));
        slots.free(0);
        assert_eq!(slots.in_use(), 1);
        assert_eq!(slots.allocate(), Ok(2), "a fresh slot before a freed one");
        slots.free(2);
        slots.free(1);
        assert_eq!(slots.in_use(), 0);
        assert_eq!(slots.allocate(), Ok(0));
        assert_eq!(slots.allocate(), Ok(2));
        assert_eq!(slots.allocate(), Ok(1));
        assert_eq!(slots.allocate(), Err(SlotsExhausted { capacity: 3 }));
        let mut resumed = SlotAllocator::new(4);
        resumed.take(2);
        assert_eq!(resumed.in_use(), 1, "slots below a resumed one are free");
        assert_eq!(resumed.allocate(), Ok(3));
        assert_eq!(resumed.allocate(), Ok(0));
        assert_eq!(resumed.allocate(), Ok(1));
    }
}
