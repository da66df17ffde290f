//! Where the figures come from.
//!
//! - `ebpf`: counters kept in the kernel per task (CPU time, membership).
//! - `procfs`: point-in-time figures of the task's live processes (memory,
//!   threads, file descriptors), read from `/proc`.

use monitor_common::{NET_BUCKETS, NetBucket};

#[cfg(target_os = "linux")]
pub mod ebpf;
#[cfg(target_os = "linux")]
pub mod procfs;

/// Cumulative figures of one task, as counted in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelTotals {
    /// On-CPU ns of every thread that ever belonged to the task.
    pub cpu_ns: u64,
    /// Processes that have not exited.
    pub live_processes: u64,
    /// Threads that may still run; 0 once the task is completely gone.
    pub live_threads: u64,
    /// Processes that ever joined the task.
    pub processes_started: u64,
    pub disk: DiskTotals,
    pub net: NetTotals,
}

/// Disk bytes of a task, with `/proc/<pid>/io` semantics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskTotals {
    /// Read bios submitted (`read_bytes`).
    pub read_bytes: u64,
    /// Page-cache bytes dirtied (part of `write_bytes`).
    pub dirtied_bytes: u64,
    /// Direct-I/O write bios submitted (the rest of `write_bytes`).
    pub direct_write_bytes: u64,
    /// Every write bio submitted in the task's own context.
    pub submitted_write_bytes: u64,
    /// Dirty bytes truncated before writeback (`cancelled_write_bytes`).
    pub cancelled_write_bytes: u64,
}

impl DiskTotals {
    /// `/proc/<pid>/io` `write_bytes`: dirtied page cache plus direct I/O.
    pub fn write_bytes(&self) -> u64 {
        self.dirtied_bytes + self.direct_write_bytes
    }
}

/// Socket payload bytes of a task, indexed by [`NetBucket`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetTotals {
    pub tx: [u64; NET_BUCKETS],
    pub rx: [u64; NET_BUCKETS],
}

impl NetTotals {
    /// `(received, sent)` bytes of one bucket.
    pub fn bucket(&self, bucket: NetBucket) -> (u64, u64) {
        (self.rx[bucket as usize], self.tx[bucket as usize])
    }

    /// Bytes sent over AF_INET/AF_INET6 sockets (AF_UNIX excluded).
    pub fn inet_tx(&self) -> u64 {
        INET_BUCKETS.iter().map(|&b| self.tx[b as usize]).sum()
    }

    /// Bytes received over AF_INET/AF_INET6 sockets (AF_UNIX excluded).
    pub fn inet_rx(&self) -> u64 {
        INET_BUCKETS.iter().map(|&b| self.rx[b as usize]).sum()
    }
}

const INET_BUCKETS: [NetBucket; 3] = [NetBucket::Tcp, NetBucket::Udp, NetBucket::Other];

/// Point-in-time figures summed over a task's live processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessSample {
    pub memory_bytes: u64,
    pub threads: u64,
    pub file_descriptors: u64,
    /// Processes that could be read (some may exit while we read).
    pub processes: u64,
}
