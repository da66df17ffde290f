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

/// Names of the maps, as the loader looks them up.
pub mod maps {
    /// `HashMap<u64 task_struct address, u32 slot>`: every tracked thread.
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
}

/// Names of the read-only globals the loader sets before load.
pub mod globals {
    /// Byte offset of `pid` in `struct task_struct` (resolved from kernel BTF).
    pub const TASK_PID_OFFSET: &str = "TASK_PID_OFFSET";
    /// Byte offset of `tgid` in `struct task_struct` (resolved from kernel BTF).
    pub const TASK_TGID_OFFSET: &str = "TASK_TGID_OFFSET";
}

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
}

impl TaskCounters {
    /// Adds another CPU's copy of the counters to this one.
    pub fn accumulate(&mut self, other: &Self) {
        self.cpu_ns = self.cpu_ns.wrapping_add(other.cpu_ns);
        self.procs_started = self.procs_started.wrapping_add(other.procs_started);
        self.procs_exited = self.procs_exited.wrapping_add(other.procs_exited);
        self.threads_started = self.threads_started.wrapping_add(other.threads_started);
        self.threads_freed = self.threads_freed.wrapping_add(other.threads_freed);
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
    }

    /// Total of all failure counters.
    pub fn total_failures(&self) -> u64 {
        self.thread_insert_failures
            .wrapping_add(self.proc_insert_failures)
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of `u64`s: no padding, any bit pattern is valid.
    unsafe impl aya::Pod for super::TaskCounters {}
    unsafe impl aya::Pod for super::KernelStats {}
}
