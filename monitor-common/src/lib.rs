//! The `#[repr(C)]` contract between propmon's kernel programs and its agent.
//!
//! Every type here crosses a BPF map, so layouts avoid implicit padding
//! (fields ordered by size, `u32`/`u64` only) and both sides are compiled from
//! this one definition. Map and global names are listed here too, so that the
//! loader cannot drift from the programs.
#![no_std]

/// Number of task slots: one slot is one monitored task (a Propeller task id).
/// Userspace allocates slots; the kernel only ever indexes with them.
pub const MAX_TASKS: u32 = 4096;
/// Threads tracked at once across all tasks (`TRACKED_THREADS` capacity).
pub const MAX_TRACKED_THREADS: u32 = 131_072;
/// Processes tracked at once across all tasks (`TRACKED_PROCS` capacity).
pub const MAX_TRACKED_PROCS: u32 = 65_536;
/// Threads that may be waiting to have their next child adopted (`SPAWN_PENDING`).
pub const MAX_PENDING_SPAWNS: u32 = 1024;
/// Running threads waiting to be adopted into a task (`ADOPT_PENDING`).
pub const MAX_PENDING_ADOPTIONS: u32 = 65_536;
/// Task ids the kernel looks for in argv at exec (`DISCOVER`).
pub const MAX_DISCOVERIES: u32 = 1024;
/// Longest task id that exec discovery can match, in bytes.
pub const DISCOVERY_ID_BYTES: usize = 64;
/// Bytes of argv that exec discovery reads (a power of two).
pub const DISCOVERY_ARGV_BYTES: usize = 2048;
/// What precedes a task id in the host runtime's module path.
pub const DISCOVERY_PREFIX: &[u8; 8] = b"proplet_";
/// What follows it.
pub const DISCOVERY_SUFFIX: &[u8; 5] = b".wasm";

/// Bytes of the `TASK_EVENTS` ring buffer (a power of two, page multiple).
pub const TASK_EVENTS_BYTES: u32 = 256 * 1024;

/// Per-task collection flags (`TASK_CONFIG`, copied into [`ThreadState`]):
/// a hook family does nothing for a task without its flag.
pub mod collect {
    pub const CPU: u32 = 1;
    pub const DISK: u32 = 2;
    pub const NETWORK: u32 = 4;
}

/// Index of the `ADOPT_PENDING` gate in `ADOPT_GATE`.
pub const GATE_ADOPT: u32 = 0;
/// Index of the `DISCOVER` gate in `ADOPT_GATE`.
pub const GATE_DISCOVER: u32 = 1;

/// Names of the maps, as the loader looks them up.
pub mod maps {
    /// `HashMap<u64 task_struct address, ThreadState>`: every tracked thread.
    pub const TRACKED_THREADS: &str = "TRACKED_THREADS";
    /// `HashMap<u32 tgid, u32 slot>`: every live tracked process.
    pub const TRACKED_PROCS: &str = "TRACKED_PROCS";
    /// `PerCpuArray<TaskCounters>` indexed by slot.
    pub const TASK_COUNTERS: &str = "TASK_COUNTERS";
    /// `HashMap<u32 tid, u32 slot>`: the next child forked by this thread
    /// becomes the root process of the task in that slot.
    pub const SPAWN_PENDING: &str = "SPAWN_PENDING";
    /// `PerCpuArray<KernelStats>` with a single entry.
    pub const KERNEL_STATS: &str = "KERNEL_STATS";
    /// `Array<u32>` indexed by slot: the task's `collect` flags.
    pub const TASK_CONFIG: &str = "TASK_CONFIG";
    /// `HashMap<u32 tid, PendingThread>`: running threads to adopt the next
    /// time the kernel sees them (`propmon agent --attach`).
    pub const ADOPT_PENDING: &str = "ADOPT_PENDING";
    /// `Array<u32>` with two entries, each non-zero while the matching map
    /// may hold entries, so that hooks look there only then:
    /// [`GATE_ADOPT`] for `ADOPT_PENDING`, [`GATE_DISCOVER`] for `DISCOVER`.
    pub const ADOPT_GATE: &str = "ADOPT_GATE";
    /// `RingBuf` of [`TaskEvent`]s.
    pub const TASK_EVENTS: &str = "TASK_EVENTS";
    /// `HashMap<[u8; DISCOVERY_ID_BYTES] task id (NUL padded), u32 slot>`:
    /// a process that execs with `proplet_<id>.wasm` in its argv becomes
    /// the root of that task.
    pub const DISCOVER: &str = "DISCOVER";
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
    /// `task_struct.bio_list`: non-NULL while the task is inside a block
    /// driver's submission, i.e. for bios a stacked device re-submits.
    pub task_bio_list: u32,
    /// `task_struct.ioac.cancelled_write_bytes` (u64, CONFIG_TASK_IO_ACCOUNTING).
    pub task_cancelled_write_bytes: u32,
    /// `task_struct.start_boottime` (u64 ns since boot).
    pub task_start_boottime: u32,
    /// `task_struct.mm` (pointer).
    pub task_mm: u32,
    /// `mm_struct.arg_start` / `arg_end`: where argv lies in user memory.
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// Nanoseconds per clock tick (USER_HZ), the unit of `/proc/<pid>/stat`
    /// starttime.
    pub ns_per_clock_tick: u32,
    /// `sock.__sk_common.skc_family` (u16).
    pub sock_family: u32,
    /// `sock.sk_protocol` (u16).
    pub sock_protocol: u32,
    /// `bio.bi_opf` (u32: operation in the low 8 bits, then flags).
    pub bio_opf: u32,
    /// `bio.bi_iter.bi_size` (u32 bytes).
    pub bio_size: u32,
    /// `folio.flags` (first word of the flags).
    pub folio_flags: u32,
    /// `folio._nr_pages` (u32), valid when the folio is large.
    pub folio_nr_pages: u32,
    /// Bit of `PG_head` in `folio.flags` (enum pageflags): set on large folios.
    pub pg_head_bit: u32,
    /// Bit of `__REQ_META` in `bi_opf` (enum req_flag_bits).
    pub req_meta_bit: u32,
    /// Bit of `__REQ_IDLE` in `bi_opf` (enum req_flag_bits).
    pub req_idle_bit: u32,
    /// Bytes per page (PAGE_SIZE).
    pub page_size: u32,
}

/// What the kernel keeps per tracked thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    /// The task the thread belongs to.
    pub slot: u32,
    /// The task's [`collect`] flags.
    pub flags: u32,
    /// The thread's `ioac.cancelled_write_bytes` when last charged: the
    /// kernel keeps that figure per thread and has no hook where it grows.
    pub cancelled_write_bytes_seen: u64,
}

/// A running thread to adopt: userspace found it in `/proc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingThread {
    pub slot: u32,
    pub _padding: u32,
    /// `/proc/<tid>/stat` starttime (clock ticks since boot): a recycled
    /// TID belongs to a thread that started later and is not adopted.
    pub start_ticks: u64,
}

/// Something userspace must react to without polling every task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskEvent {
    pub slot: u32,
    /// [`TaskEvent::PROCESS_EXITED`] or [`TaskEvent::DISCOVERED`].
    pub kind: u32,
}

impl TaskEvent {
    /// The last thread of one of the task's processes exited: the task may
    /// be over once its threads are released.
    pub const PROCESS_EXITED: u32 = 1;
    /// A process exec'd with the task's module in its argv and became the
    /// task's root.
    pub const DISCOVERED: u32 = 2;
}

/// Network protocol buckets of [`TaskCounters::net_tx`] / `net_rx`.
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

/// Cumulative per-task counters, kept per CPU and summed by userspace.
///
/// All fields only ever grow, so that a sum over CPUs is meaningful even when
/// a process is counted in on one CPU and counted out on another: live
/// counts are `started - exited`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCounters {
    /// On-CPU nanoseconds of every thread of the task (`sched_stat_runtime`).
    pub cpu_ns: u64,
    /// Processes (thread-group leaders) that joined the task.
    pub procs_started: u64,
    /// Processes whose last thread has exited.
    pub procs_exited: u64,
    /// Threads that joined the task (every process counts its first thread).
    pub threads_started: u64,
    /// Threads whose `task_struct` was released: they can never run again,
    /// so every nanosecond they consumed has been counted.
    pub threads_freed: u64,
    /// Bytes of read bios the task submitted (`/proc/<pid>/io` read_bytes).
    pub disk_read_bytes: u64,
    /// Bytes of page-cache pages the task dirtied.
    pub disk_dirtied_bytes: u64,
    /// Bytes of direct-I/O write bios the task submitted.
    pub disk_direct_write_bytes: u64,
    /// Bytes of write bios the task submitted in its own context (direct
    /// I/O, and writeback it ran itself, e.g. in `fsync`).
    pub disk_submitted_write_bytes: u64,
    /// Bytes of dirty pages truncated before writeback.
    pub disk_cancelled_write_bytes: u64,
    /// Payload bytes sent through the task's sockets, per [`NetBucket`].
    pub net_tx: [u64; NET_BUCKETS],
    /// Payload bytes received through the task's sockets, per [`NetBucket`].
    pub net_rx: [u64; NET_BUCKETS],
}

impl TaskCounters {
    /// Adds another CPU's copy of the counters to this one.
    pub fn accumulate(&mut self, other: &Self) {
        self.cpu_ns = self.cpu_ns.wrapping_add(other.cpu_ns);
        self.procs_started = self.procs_started.wrapping_add(other.procs_started);
        self.procs_exited = self.procs_exited.wrapping_add(other.procs_exited);
        self.threads_started = self.threads_started.wrapping_add(other.threads_started);
        self.threads_freed = self.threads_freed.wrapping_add(other.threads_freed);
        self.disk_read_bytes = self.disk_read_bytes.wrapping_add(other.disk_read_bytes);
        self.disk_dirtied_bytes = self
            .disk_dirtied_bytes
            .wrapping_add(other.disk_dirtied_bytes);
        self.disk_direct_write_bytes = self
            .disk_direct_write_bytes
            .wrapping_add(other.disk_direct_write_bytes);
        self.disk_submitted_write_bytes = self
            .disk_submitted_write_bytes
            .wrapping_add(other.disk_submitted_write_bytes);
        self.disk_cancelled_write_bytes = self
            .disk_cancelled_write_bytes
            .wrapping_add(other.disk_cancelled_write_bytes);
        for bucket in 0..NET_BUCKETS {
            self.net_tx[bucket] = self.net_tx[bucket].wrapping_add(other.net_tx[bucket]);
            self.net_rx[bucket] = self.net_rx[bucket].wrapping_add(other.net_rx[bucket]);
        }
    }

    /// Processes of the task that have not exited yet.
    pub fn live_processes(&self) -> u64 {
        self.procs_started.saturating_sub(self.procs_exited)
    }

    /// Threads that may still run (exited but not yet released ones included).
    pub fn live_threads(&self) -> u64 {
        self.threads_started.saturating_sub(self.threads_freed)
    }
}

/// Health counters of the kernel side: anything here means data was lost,
/// and the agent reports it instead of silently under-counting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Forks of tracked threads that could not be recorded (map full).
    pub thread_insert_failures: u64,
    /// New tracked processes that could not be recorded (map full).
    pub proc_insert_failures: u64,
    /// Task events lost because the ring buffer was full.
    pub event_drops: u64,
    /// Execs whose argv could not be read for discovery.
    pub argv_read_failures: u64,
}

impl KernelStats {
    /// Adds another CPU's copy of the counters to this one.
    pub fn accumulate(&mut self, other: &Self) {
        self.thread_insert_failures = self
            .thread_insert_failures
            .wrapping_add(other.thread_insert_failures);
        self.proc_insert_failures = self
            .proc_insert_failures
            .wrapping_add(other.proc_insert_failures);
        self.event_drops = self.event_drops.wrapping_add(other.event_drops);
        self.argv_read_failures = self
            .argv_read_failures
            .wrapping_add(other.argv_read_failures);
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of `u64`s or of `u32`s: no
    // padding, any bit pattern is valid.
    unsafe impl aya::Pod for super::TaskCounters {}
    unsafe impl aya::Pod for super::KernelStats {}
    unsafe impl aya::Pod for super::KernelLayout {}
    unsafe impl aya::Pod for super::ThreadState {}
    unsafe impl aya::Pod for super::PendingThread {}
    unsafe impl aya::Pod for super::TaskEvent {}
}
