//! The maps shared by all programs (layouts in `monitor-common`).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use monitor_common::{
    KernelStats, MAX_PENDING_SPAWNS, MAX_TASKS, MAX_TRACKED_PROCS, MAX_TRACKED_THREADS,
    TaskCounters,
};

/// Tracked threads, keyed by `task_struct` address rather than TID: the
/// address is what every scheduler hook receives, it needs no field read on
/// the hot path, and it cannot be recycled before `sched_process_free`
/// removes the entry, whereas a TID is freed (and may be reused) as soon as
/// the thread is reaped.
#[map(name = "TRACKED_THREADS")]
pub static TRACKED_THREADS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_TRACKED_THREADS, 0);

/// Live tracked processes (tgid -> slot), for userspace to find the
/// processes of a task in `/proc` without scanning the host.
#[map(name = "TRACKED_PROCS")]
pub static TRACKED_PROCS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TRACKED_PROCS, 0);

/// Per-task cumulative counters, one copy per CPU so that no increment is
/// lost to concurrency.
#[map(name = "TASK_COUNTERS")]
pub static TASK_COUNTERS: PerCpuArray<TaskCounters> = PerCpuArray::with_max_entries(MAX_TASKS, 0);

/// Threads whose next child starts a task (tid -> slot), one-shot.
#[map(name = "SPAWN_PENDING")]
pub static SPAWN_PENDING: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PENDING_SPAWNS, 0);

/// Health counters: every lost record is counted here.
#[map(name = "KERNEL_STATS")]
pub static KERNEL_STATS: PerCpuArray<KernelStats> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's counters of `slot`; `None` only for a slot out of range.
#[inline(always)]
pub fn task_counters(slot: u32) -> Option<&'static mut TaskCounters> {
    // SAFETY: per-CPU value, and our programs run with migration disabled;
    // each field is only written by one hook, so nesting cannot tear it.
    TASK_COUNTERS.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

/// This CPU's health counters.
#[inline(always)]
pub fn kernel_stats() -> Option<&'static mut KernelStats> {
    // SAFETY: as for `task_counters`.
    KERNEL_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
