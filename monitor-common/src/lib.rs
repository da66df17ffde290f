//! The `#[repr(C)]` contract between propmon's kernel programs and its agent.
//!
//! Every type here crosses a BPF map, so layouts avoid implicit padding
//! (fields ordered by size, `u32`/`u64` only) and both sides are compiled from
//! this one definition. Map and global names are listed here too, so that the
//! loader cannot drift from the programs.
//!
//! The model: a *task* is a slot number with a generation. A thread belongs
//! to a task when its task-local storage ([`ThreadState`]) names the slot and
//! the slot's current generation ([`TaskConfig`]); bumping the generation
//! makes every thread that still names the old one a stranger at once. The
//! kernel's own per-thread counters (`se.sum_exec_runtime`, `ioac`) and the
//! socket bytes the thread moved are *charged* to the task's [`TaskRecord`]
//! by whoever looks at the thread next (the sampling pass, or the thread's
//! release), each part exactly once.
#![no_std]

/// Number of task slots: one slot is one monitored task (a Propeller task id).
/// Userspace allocates slots; the kernel only ever indexes with them.
pub const MAX_TASKS: u32 = 4096;
/// Task ids the kernel looks for in argv at exec (`DISCOVER`): tasks
/// waiting for their process.
pub const MAX_DISCOVERIES: u32 = 1024;
/// Slots the kernel may take by itself for module processes that exec
/// before their task's start message arrives (`PROVISIONAL_POOL`).
pub const MAX_PROVISIONAL: u32 = 64;
/// Longest task id that exec discovery can match, in bytes.
pub const DISCOVERY_ID_BYTES: usize = 64;
/// Bytes of argv that exec discovery reads (a power of two).
pub const DISCOVERY_ARGV_BYTES: usize = 2048;
/// What precedes a task id in the host runtime's module path.
pub const DISCOVERY_PREFIX: &[u8; 8] = b"proplet_";
/// What follows it, ending the file name.
pub const DISCOVERY_SUFFIX: &[u8; 5] = b".wasm";

/// Remote endpoints tracked at once across all tasks (`PEERS` rows): a
/// task's peer beyond them is counted in its record's `unlisted` figures.
pub const MAX_PEER_ROWS: u32 = 16384;
/// No peer row: the figures go to the task's `unlisted` counters.
pub const NO_ROW: u32 = u32::MAX;

/// Bytes of the `TASK_EVENTS` ring buffer (a power of two, page multiple).
pub const TASK_EVENTS_BYTES: u32 = 256 * 1024;

/// Cgroups that define a task (`CGROUPS`: `propmon agent --attach-cgroup`).
pub const MAX_CGROUP_TASKS: u32 = 256;
/// Levels of the cgroup tree the kernel looks up from a process's cgroup
/// for one that defines a task: a process in a sub-cgroup of a task's
/// cgroup belongs to it, up to this many levels below.
pub const CGROUP_DEPTH: u32 = 16;
/// Threads whose process moved between cgroups and that have not been
/// looked at since (`PENDING_MOVES`); also the most threads of one
/// process a migration records.
pub const MAX_PENDING_MOVES: u32 = 8192;
/// [`SlotRef::slot`] of a move that leaves every task.
pub const NO_SLOT: u32 = u32::MAX;

/// Per-task collection flags (in [`TaskConfig::flags`], copied into each
/// thread's [`ThreadState::flags`]): the kernel skips what is not asked for.
pub mod collect {
    pub const CPU: u32 = 1;
    pub const DISK: u32 = 2;
    pub const NETWORK: u32 = 4;
    pub const FILE_DESCRIPTORS: u32 = 8;
    /// Every collection flag.
    pub const ALL: u32 = CPU | DISK | NETWORK | FILE_DESCRIPTORS;
}

/// Properties of a slot, in [`TaskConfig::flags`] above the `collect` bits.
pub mod slot {
    /// The slot holds a task (a free slot's flags are 0).
    pub const IN_USE: u32 = 1 << 10;
    /// The slot of the proplet process: a member that execs a task's
    /// module leaves it for that task (discovery wins over in-process
    /// attribution).
    pub const YIELDS_TO_DISCOVERY: u32 = 1 << 8;
    /// Members descend from the proplet process: exec discovery accepts
    /// them when `switch::REQUIRE_LINEAGE` is on.
    pub const PROPLET_LINEAGE: u32 = 1 << 9;
    /// The task is defined by a cgroup (`CGROUPS`): a member moved out of
    /// it leaves the task.
    pub const CGROUP: u32 = 1 << 11;
}

/// Per-thread flags, in [`ThreadState::flags`] above the `collect` bits.
pub mod thread {
    /// Attached by userspace: the first look at the thread takes its
    /// kernel counters as the baseline instead of charging them.
    pub const BASELINE_PENDING: u32 = 1 << 16;
    /// Not a member: the next thread this thread creates starts the task
    /// (`propmon run`'s own thread, around the spawn of its command).
    pub const SPAWNER: u32 = 1 << 17;
}

/// Indexes of the `SWITCHES` array: agent-wide settings the hooks read.
pub mod switch {
    /// Exec discovery is on (Propeller mode).
    pub const DISCOVERY: u32 = 0;
    /// Exec discovery accepts only descendants of the proplet process.
    pub const REQUIRE_LINEAGE: u32 = 1;
    /// Some task is defined by a cgroup: migrations and processes created
    /// straight into a cgroup (`CLONE_INTO_CGROUP`) are looked at.
    pub const CGROUPS: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Names of the maps, as the loader looks them up.
pub mod maps {
    /// `TASK_STORAGE<ThreadState>`: which task each thread belongs to,
    /// and what of its counters was charged.
    pub const THREADS: &str = "THREADS";
    /// `Array<TaskConfig>` indexed by slot, memory-mapped by userspace, which
    /// writes each entry as one u64 (`generation | flags << 32`).
    pub const TASK_CONFIG: &str = "TASK_CONFIG";
    /// `Array<TaskRecord>` indexed by slot, memory-mapped by userspace.
    pub const TASKS: &str = "TASKS";
    /// `Array<Control>` with one entry, memory-mapped by userspace.
    pub const CONTROL: &str = "CONTROL";
    /// `Array<u32>` of `switch` values.
    pub const SWITCHES: &str = "SWITCHES";
    /// `RingBuf` of [`TaskEvent`]s.
    pub const TASK_EVENTS: &str = "TASK_EVENTS";
    /// `HashMap<[u8; DISCOVERY_ID_BYTES] task id (NUL padded), SlotRef>`:
    /// a process that execs `proplet_<id>.wasm` becomes that task's root.
    pub const DISCOVER: &str = "DISCOVER";
    /// `Queue<SlotRef>`: free slots for provisional roots.
    pub const PROVISIONAL_POOL: &str = "PROVISIONAL_POOL";
    /// `HashMap<[u8; DISCOVERY_ID_BYTES], SlotRef>`: ids with a provisional root.
    pub const PROVISIONAL: &str = "PROVISIONAL";
    /// `Array<PeerRow>`, memory-mapped: every remote endpoint of every task.
    pub const PEERS: &str = "PEERS";
    /// `HashMap<PeerKey, u32 row>`: the row of a task's peer.
    pub const PEER_INDEX: &str = "PEER_INDEX";
    /// `Queue<u32 row>`: rows userspace took back from ended tasks.
    pub const FREE_PEER_ROWS: &str = "FREE_PEER_ROWS";
    /// `SK_STORAGE<SocketState>`: the peer row of a task's socket.
    pub const SOCKETS: &str = "SOCKETS";
    /// `HashMap<u64 cgroup id, SlotRef>`: cgroups (v2) that define a task;
    /// the id is the cgroup directory's inode number (`kernfs_node.id`).
    pub const CGROUPS: &str = "CGROUPS";
    /// `HashMap<u32 thread id, PendingMove>`: threads of a process that
    /// moved between cgroups, to settle at the next look at them.
    pub const PENDING_MOVES: &str = "PENDING_MOVES";
    /// aya-log's ring buffer of kernel log records (defined by
    /// `aya-log-ebpf`), pinned so that a restarted agent reads what the
    /// programs a previous agent left attached log.
    pub const LOGS: &str = "AYA_LOGS";
    /// Every map that must outlive the agent for its tasks to survive a
    /// restart (pinned in bpffs when the agent keeps state).
    pub const PERSISTENT: [&str; 16] = [
        THREADS,
        TASK_CONFIG,
        TASKS,
        CONTROL,
        SWITCHES,
        TASK_EVENTS,
        DISCOVER,
        PROVISIONAL_POOL,
        PROVISIONAL,
        PEERS,
        PEER_INDEX,
        FREE_PEER_ROWS,
        SOCKETS,
        CGROUPS,
        PENDING_MOVES,
        LOGS,
    ];
}

/// Name of the read-only global holding the [`KernelLayout`].
pub const LAYOUT_GLOBAL: &str = "LAYOUT";

/// What the programs need to know about the running kernel's structs.
///
/// Rust eBPF has no CO-RE relocations yet, so the loader reads these from the
/// kernel's BTF (`/sys/kernel/btf/vmlinux`) and sets them before load.
/// Offsets are in bytes from the start of the named struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `task_struct.pid` (thread id).
    pub task_pid: u32,
    /// `task_struct.tgid` (process id).
    pub task_tgid: u32,
    /// `task_struct.se.sum_exec_runtime` (u64 ns on CPU).
    pub task_sum_exec_runtime: u32,
    /// `task_struct.mm` (pointer).
    pub task_mm: u32,
    /// `task_struct.signal` (pointer).
    pub task_signal: u32,
    /// `task_struct.files` (pointer).
    pub task_files: u32,
    /// `task_struct.bpf_storage` (pointer, NULL while the thread has no
    /// task-local storage in any map).
    pub task_bpf_storage: u32,
    /// `task_struct.ioac.{rchar, wchar, syscr, syscw, read_bytes,
    /// write_bytes, cancelled_write_bytes}` (u64 each; the first four need
    /// CONFIG_TASK_XACCT), in [`KernelCounters`] order after `cpu_ns`.
    pub ioac_fields: [u32; 7],
    /// `signal_struct.live` (atomic_t: threads not yet through `do_exit`).
    pub signal_live: u32,
    /// `signal_struct.nr_threads` (int: threads not yet released).
    pub signal_nr_threads: u32,
    /// `mm_struct.rss_stat` (array of struct percpu_counter).
    pub mm_rss_stat: u32,
    /// Size of one `struct percpu_counter`.
    pub percpu_counter_size: u32,
    /// `percpu_counter.count` (s64).
    pub percpu_counter_count: u32,
    /// Indexes of MM_FILEPAGES, MM_ANONPAGES, MM_SHMEMPAGES in `rss_stat`:
    /// their sum is the RSS that `/proc/<pid>/stat` reports.
    pub rss_members: [u32; 3],
    /// `files_struct.fdt` (pointer).
    pub files_fdt: u32,
    /// `fdtable.max_fds` (unsigned int).
    pub fdtable_max_fds: u32,
    /// `fdtable.open_fds` (pointer to a bitmap of unsigned longs).
    pub fdtable_open_fds: u32,
    /// `mm_struct.arg_start` / `arg_end`: where argv lies in user memory.
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// `sock.__sk_common.skc_family` (u16).
    pub sock_family: u32,
    /// `sock.sk_protocol` (u16).
    pub sock_protocol: u32,
    /// `sock.__sk_common.skc_daddr` (IPv4, network order).
    pub sock_daddr: u32,
    /// `sk_buff.cb` + `tcp_skb_cb.tcp_gso_segs` (u16): the segments a TCP
    /// skb carries (`tcp_skb_pcount`), which a retransmission counts.
    pub skb_tcp_segments: u32,
    /// `sock.__sk_common.skc_dport` (network order).
    pub sock_dport: u32,
    /// `sock.__sk_common.skc_v6_daddr` (16 bytes).
    pub sock_v6_daddr: u32,
    /// `sock.__sk_common.skc_state` (u8, TCP_* states).
    pub sock_state: u32,
    /// `task_struct.flags` (unsigned int, `PF_*`).
    pub task_flags: u32,
    /// `task_struct.thread_node` (list_head in the process's thread list).
    pub task_thread_node: u32,
    /// `signal_struct.thread_head` (list_head: the process's threads).
    pub signal_thread_head: u32,
    /// `task_struct.cgroups` (pointer to struct css_set).
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp` (the thread's cgroup on the v2 hierarchy).
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn` (pointer to struct kernfs_node).
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (u64: the cgroup directory's inode number).
    pub kernfs_node_id: u32,
    /// `cgroup.root` (pointer to struct cgroup_root).
    pub cgroup_root: u32,
    /// `cgroup_root.hierarchy_id` (int: 0 for the v2 hierarchy).
    pub cgroup_root_hierarchy_id: u32,
    /// `cgroup.self.parent` (pointer to the parent's cgroup_subsys_state).
    pub cgroup_parent: u32,
    /// `cgroup_subsys_state.cgroup` (pointer to its struct cgroup).
    pub css_cgroup: u32,
}

/// The kernel's own per-thread counters that propmon charges to tasks:
/// `se.sum_exec_runtime` and the `ioac` fields `/proc/<pid>/io` prints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// On-CPU nanoseconds.
    pub cpu_ns: u64,
    /// Bytes passed to read-like system calls.
    pub rchar: u64,
    /// Bytes passed to write-like system calls.
    pub wchar: u64,
    /// Read-like system calls.
    pub syscr: u64,
    /// Write-like system calls.
    pub syscw: u64,
    /// Bytes the thread caused to be read from block devices.
    pub read_bytes: u64,
    /// Bytes the thread dirtied in the page cache or wrote with direct I/O.
    pub write_bytes: u64,
    /// Dirty page-cache bytes truncated before writeback.
    pub cancelled_write_bytes: u64,
}

/// Number of `u64` fields of [`KernelCounters`].
pub const KERNEL_COUNTERS: usize = 8;

impl KernelCounters {
    pub const fn as_array(&self) -> [u64; KERNEL_COUNTERS] {
        [
            self.cpu_ns,
            self.rchar,
            self.wchar,
            self.syscr,
            self.syscw,
            self.read_bytes,
            self.write_bytes,
            self.cancelled_write_bytes,
        ]
    }
}

/// Network protocol buckets of [`NetCounters`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetBucket {
    /// AF_INET/AF_INET6 with IPPROTO_TCP.
    Tcp = 0,
    /// AF_INET/AF_INET6 with IPPROTO_UDP or IPPROTO_UDPLITE.
    Udp = 1,
    /// Any other AF_INET/AF_INET6 protocol (ICMP, SCTP, MPTCP, raw...).
    Other = 2,
    /// AF_UNIX, reported apart: it never leaves the host.
    Unix = 3,
}

pub const NET_BUCKETS: usize = 4;

/// Socket payload bytes per [`NetBucket`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub tx_bytes: [u64; NET_BUCKETS],
    pub rx_bytes: [u64; NET_BUCKETS],
}

/// What the kernel keeps per thread of a task, in task-local storage.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    /// The task the thread belongs to...
    pub slot: u32,
    /// ...as long as the slot still has this generation.
    pub generation: u32,
    /// `collect` flags of the task, and `thread` flags.
    pub flags: u32,
    pub _reserved: u32,
    /// How much of the thread's own kernel counters has been charged to
    /// the task: only ever advanced, with compare-and-swap, by whoever
    /// charges the difference.
    pub charged: KernelCounters,
    /// Socket payload the thread moved while in the task (written by the
    /// thread itself only).
    pub net: NetCounters,
    /// How much of `net` has been charged to the task.
    pub net_charged: NetCounters,
    /// The socket the thread last moved bytes through, and its peer row:
    /// a thread that streams through one socket finds its row at once.
    pub last_socket: u64,
    pub last_row: u32,
    pub _reserved2: u32,
}

/// A thread whose process moved between cgroups, waiting for the next look
/// at it (the sampling pass, its release, its next thread creation): what
/// it consumed up to the move belongs to the task it was in, what follows
/// to `to`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingMove {
    /// The task it joins; [`NO_SLOT`] if it only leaves its task.
    pub to: SlotRef,
    /// Its kernel counters at the move.
    pub at_move: KernelCounters,
}

/// A slot at a generation: a task, as the kernel knows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotRef {
    pub slot: u32,
    pub generation: u32,
}

/// Per-slot settings, written by userspace.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskConfig {
    /// Bumped each time the slot is given to a new task or released.
    pub generation: u32,
    /// `collect` flags and `slot` properties; 0 for a free slot.
    pub flags: u32,
}

/// Everything counted for one task, in a memory-mapped array that
/// userspace reads without a system call.
///
/// The cumulative counters only ever grow (atomic adds from any CPU), so
/// that reading them at any moment gives figures that never go back. The
/// `snapshot` is rewritten by every sampling pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskRecord {
    /// Charged kernel counters of every thread that was in the task.
    pub counters: KernelCounters,
    /// Charged socket payload.
    pub net: NetCounters,
    /// Threads that joined the task (its first thread included).
    pub threads_started: u64,
    /// Threads that were released (or left the task): they can no longer
    /// run, and everything they consumed has been charged.
    pub threads_freed: u64,
    /// Processes (thread-group leaders) that joined the task.
    pub procs_started: u64,
    /// Processes whose last thread exited.
    pub procs_exited: u64,
    pub snapshot: Snapshot,
    /// Network figures of peers that got no row (`PEERS` full).
    pub unlisted: PeerCounters,
    /// Userspace's own bookkeeping, kept here so that it survives an
    /// agent restart with the pinned map.
    pub user: UserRecord,
}

/// A remote endpoint of a task: the key of a peer row.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub slot: u32,
    pub generation: u32,
    /// AF_INET or AF_INET6; 0 for sockets without a single peer
    /// (unconnected UDP), whose address and port are then 0.
    pub family: u16,
    /// IPPROTO_*.
    pub protocol: u16,
    /// Port, network order.
    pub port: u16,
    pub _padding: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub addr: [u8; 16],
}

/// What went through a task's sockets, cumulative (atomic adds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Payload, per [`NetBucket`] (only the peer's protocol's bucket for a
    /// row; every bucket for a task's unlisted figures).
    pub net: NetCounters,
    /// TCP connections that became established, and that closed after.
    pub connections_opened: u64,
    pub connections_closed: u64,
    /// TCP connection attempts that closed before being established
    /// (refused, timed out, reset).
    pub failed_connections: u64,
    /// TCP segments retransmitted.
    pub retransmits: u64,
    /// Resets received on established TCP connections.
    pub resets_received: u64,
}

/// One peer of one task: whose, and what went through it. A row is the
/// kernel's from the moment it takes it (from `FREE_PEER_ROWS`, or the
/// next never-used one) until userspace takes it back when the task ends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerRow {
    pub key: PeerKey,
    pub counters: PeerCounters,
}

/// What the kernel keeps per socket of a task (socket-local storage).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketState {
    pub slot: u32,
    pub generation: u32,
    /// Its peer row ([`NO_ROW`] when none could be had).
    pub row: u32,
    /// [`SocketState::ESTABLISHED`].
    pub flags: u32,
}

impl SocketState {
    /// The TCP connection was counted as opened.
    pub const ESTABLISHED: u32 = 1;
}

/// Point-in-time figures of a task's live processes, from one pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The pass ([`Control::pass`]) that wrote the figures below; figures
    /// of an older pass mean the task had no live thread in the latest one.
    pub pass: u64,
    /// Live processes (some thread not through `do_exit` yet).
    pub processes: u64,
    /// Threads of the live processes (`/proc/<pid>/stat` num_threads).
    pub threads: u64,
    /// Resident pages (`/proc/<pid>/stat` rss).
    pub rss_pages: u64,
    /// Open file descriptors.
    pub file_descriptors: u64,
}

/// Userspace's per-task state, opaque to the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRecord {
    pub words: [u64; 8],
}

/// Agent-wide state shared with the kernel (memory-mapped).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// The number of the sampling pass being run (set by userspace).
    pub pass: u64,
    /// `PEERS` rows ever taken fresh (the next fresh row's index): rows
    /// below it may be in use.
    pub peer_rows_used: u64,
    /// Entries of `PENDING_MOVES`, so that hooks look there only when
    /// there are some.
    pub moves_pending: u64,
    pub stats: KernelStats,
}

/// Health counters of the kernel side: anything here means data was lost,
/// and the agent reports it instead of silently under-counting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Threads that could not be given task-local storage (out of memory).
    pub storage_failures: u64,
    /// Task events lost because the ring buffer was full.
    pub event_drops: u64,
    /// Execs whose argv could not be read for discovery.
    pub argv_read_failures: u64,
    /// Module execs with no task waiting and no provisional slot left.
    pub provisional_exhausted: u64,
    /// Module execs refused because they do not descend from the proplet.
    pub lineage_refused: u64,
    /// Peers that got no row (every `PEERS` row taken).
    pub peer_rows_exhausted: u64,
    /// Module execs whose provisional root could not be recorded (the
    /// `PROVISIONAL` map was full).
    pub discovery_map_full: u64,
    /// Threads of a process that moved between cgroups whose move could
    /// not be recorded (`PENDING_MOVES` full, or a process with more
    /// threads than it holds): they keep their old task.
    pub move_failures: u64,
    /// Sampling passes that found the kernel structs not where the
    /// offsets read from BTF say (a broken BTF): figures are wrong.
    pub layout_mismatches: u64,
}

/// Something userspace must react to without polling every task.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    pub kind: u32,
    pub slot: u32,
    pub generation: u32,
    /// The process it is about.
    pub tgid: u32,
    /// The task id, for [`TaskEvent::PROVISIONAL`] (NUL padded).
    pub task_id: [u8; DISCOVERY_ID_BYTES],
}

impl TaskEvent {
    /// The last thread of one of the task's processes exited: the task may
    /// be over once its threads are released.
    pub const PROCESS_EXITED: u32 = 1;
    /// A process exec'd the task's module and became the task's root.
    pub const DISCOVERED: u32 = 2;
    /// A process exec'd the module of a task nobody announced yet, and
    /// became the root of a provisional slot.
    pub const PROVISIONAL: u32 = 3;
    /// A process moved into or out of a cgroup that defines a task; the
    /// slot is the task it left (else the one it joined). Its other
    /// threads follow at the next look at them.
    pub const MOVED: u32 = 4;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of `u64`s and `u32`s, ordered so
    // that there is no padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::KernelLayout {}
    unsafe impl aya::Pod for super::ThreadState {}
    unsafe impl aya::Pod for super::SlotRef {}
    unsafe impl aya::Pod for super::PendingMove {}
    unsafe impl aya::Pod for super::TaskConfig {}
    unsafe impl aya::Pod for super::TaskRecord {}
    unsafe impl aya::Pod for super::Control {}
    unsafe impl aya::Pod for super::TaskEvent {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::PeerRow {}
    unsafe impl aya::Pod for super::SocketState {}
}
