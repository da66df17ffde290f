//! The maps shared by all programs (layouts in `monitor-common`), and the
//! lookups every hook family uses.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::bpf_get_current_task,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use monitor_common::{
    KernelStats, MAX_PENDING_SPAWNS, MAX_TASKS, MAX_TRACKED_PROCS, MAX_TRACKED_THREADS,
    TaskCounters, ThreadState,
};

/// Tracked threads, keyed by `task_struct` address rather than TID: the
/// address is what every scheduler hook receives, it needs no field read on
/// the hot path, and it cannot be recycled before `sched_process_free`
/// removes the entry, whereas a TID is freed (and may be reused) as soon as
/// the thread is reaped.
#[map(name = "TRACKED_THREADS")]
pub static TRACKED_THREADS: HashMap<u64, ThreadState> =
    HashMap::with_max_entries(MAX_TRACKED_THREADS, 0);

/// Live tracked processes (tgid -> slot), for userspace to find the
/// processes of a task in `/proc` without scanning the host.
#[map(name = "TRACKED_PROCS")]
pub static TRACKED_PROCS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TRACKED_PROCS, 0);

/// Per-task cumulative counters, one copy per CPU.
#[map(name = "TASK_COUNTERS")]
pub static TASK_COUNTERS: PerCpuArray<TaskCounters> = PerCpuArray::with_max_entries(MAX_TASKS, 0);

/// Threads whose next child starts a task (tid -> slot), one-shot.
#[map(name = "SPAWN_PENDING")]
pub static SPAWN_PENDING: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PENDING_SPAWNS, 0);

/// Health counters: every lost record is counted here.
#[map(name = "KERNEL_STATS")]
pub static KERNEL_STATS: PerCpuArray<KernelStats> = PerCpuArray::with_max_entries(1, 0);

/// The state of a tracked thread, by `task_struct` address.
#[inline(always)]
pub fn tracked_thread(task: u64) -> Option<&'static mut ThreadState> {
    // SAFETY: hash map values stay valid while the program runs (RCU); an
    // entry is only written under its thread's runqueue lock
    // (sched_stat_runtime) or once the thread is dead (sched_process_free).
    TRACKED_THREADS
        .get_ptr_mut(task)
        .map(|p| unsafe { &mut *p })
}

/// The task slot of a tracked thread, by `task_struct` address.
#[inline(always)]
pub fn tracked_slot(task: u64) -> Option<u32> {
    tracked_thread(task).map(|thread| thread.slot)
}

/// The counters of the task the current thread belongs to, if tracked.
#[inline(always)]
pub fn current_task_counters() -> Option<&'static mut TaskCounters> {
    // SAFETY: bpf_get_current_task has no preconditions.
    let current = unsafe { bpf_get_current_task() };
    tracked_slot(current).and_then(task_counters)
}

/// This CPU's counters of `slot`; `None` only for a slot out of range.
#[inline(always)]
pub fn task_counters(slot: u32) -> Option<&'static mut TaskCounters> {
    // SAFETY: per-CPU value; updates go through `add`, which stays exact
    // even if an interrupt runs another of our programs on this CPU.
    TASK_COUNTERS.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

/// This CPU's health counters.
#[inline(always)]
pub fn kernel_stats() -> Option<&'static mut KernelStats> {
    // SAFETY: as for `task_counters`.
    KERNEL_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Adds to a counter with one atomic instruction: a per-CPU value can still
/// be updated by a program in an interrupt while another is mid-update.
#[inline(always)]
pub fn add(counter: &mut u64, value: u64) {
    // SAFETY: `counter` is a valid, aligned u64 in a map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}
