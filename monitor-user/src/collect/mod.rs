//! Where the figures come from.
//!
//! - `ebpf`: counters kept in the kernel per task (CPU time, membership).
//! - `procfs`: point-in-time figures of the task's live processes (memory,
//!   threads, file descriptors), read from `/proc`.

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
}

/// Point-in-time figures summed over a task's live processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessSample {
    pub memory_bytes: u64,
    pub threads: u64,
    pub file_descriptors: u64,
    /// Processes that could be read (some may exit while we read).
    pub processes: u64,
}
