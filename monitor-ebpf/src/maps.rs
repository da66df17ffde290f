//! The maps shared by all programs (layouts in `monitor-common`), and the
//! lookups every hook family uses.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use monitor_common::{
    DISCOVERY_ARGV_BYTES, DISCOVERY_ID_BYTES, GATE_ADOPT, GATE_DISCOVER, KernelStats,
    MAX_DISCOVERIES, MAX_PENDING_ADOPTIONS, MAX_PENDING_SPAWNS, MAX_TASKS, MAX_TRACKED_PROCS,
    MAX_TRACKED_THREADS, PendingThread, TASK_EVENTS_BYTES, TaskCounters, ThreadState,
};

/// Hash maps allocate entries as they are inserted (include/uapi/linux/bpf.h):
/// kernel memory follows the tracked threads, not the maps' capacities.
/// Allocation from any context, the scheduler's included, is safe since
/// Linux 6.1 (bpf_mem_alloc).
const BPF_F_NO_PREALLOC: u32 = 1;

/// Tracked threads, keyed by `task_struct` address rather than TID: the
/// address is what every scheduler hook receives, it needs no field read on
/// the hot path, and it cannot be recycled before `sched_process_free`
/// removes the entry, whereas a TID is freed (and may be reused) as soon as
/// the thread is reaped.
#[map(name = "TRACKED_THREADS")]
pub static TRACKED_THREADS: HashMap<u64, ThreadState> =
    HashMap::with_max_entries(MAX_TRACKED_THREADS, BPF_F_NO_PREALLOC);

/// Live tracked processes (tgid -> slot), for userspace to find the
/// processes of a task in `/proc` without scanning the host.
#[map(name = "TRACKED_PROCS")]
pub static TRACKED_PROCS: HashMap<u32, u32> =
    HashMap::with_max_entries(MAX_TRACKED_PROCS, BPF_F_NO_PREALLOC);

/// Per-task cumulative counters, one copy per CPU.
#[map(name = "TASK_COUNTERS")]
pub static TASK_COUNTERS: PerCpuArray<TaskCounters> = PerCpuArray::with_max_entries(MAX_TASKS, 0);

/// Threads whose next child starts a task (tid -> slot), one-shot.
#[map(name = "SPAWN_PENDING")]
pub static SPAWN_PENDING: HashMap<u32, u32> =
    HashMap::with_max_entries(MAX_PENDING_SPAWNS, BPF_F_NO_PREALLOC);

/// Per-task `collect` flags, set by userspace before the task's first thread
/// is adopted and copied into each of its threads' state.
#[map(name = "TASK_CONFIG")]
pub static TASK_CONFIG: Array<u32> = Array::with_max_entries(MAX_TASKS, 0);

/// Running threads to adopt (tid -> task), filled from `/proc` by userspace.
#[map(name = "ADOPT_PENDING")]
pub static ADOPT_PENDING: HashMap<u32, PendingThread> =
    HashMap::with_max_entries(MAX_PENDING_ADOPTIONS, BPF_F_NO_PREALLOC);

/// Gates of `ADOPT_PENDING` and `DISCOVER`: non-zero while they may hold entries.
#[map(name = "ADOPT_GATE")]
pub static ADOPT_GATE: Array<u32> = Array::with_max_entries(2, 0);

/// Task ids to find in argv at exec (NUL-padded id -> slot).
#[map(name = "DISCOVER")]
pub static DISCOVER: HashMap<[u8; DISCOVERY_ID_BYTES], u32> =
    HashMap::with_max_entries(MAX_DISCOVERIES, BPF_F_NO_PREALLOC);

/// Per-CPU room for an argv being searched (too big for the BPF stack).
#[map(name = "ARGV_SCRATCH")]
pub static ARGV_SCRATCH: PerCpuArray<Argv> = PerCpuArray::with_max_entries(1, 0);

/// argv bytes, plus one id being assembled.
#[repr(C)]
pub struct Argv {
    pub bytes: [u8; DISCOVERY_ARGV_BYTES],
    pub id: [u8; DISCOVERY_ID_BYTES],
}

/// Events userspace reacts to (see `monitor_common::TaskEvent`).
#[map(name = "TASK_EVENTS")]
pub static TASK_EVENTS: RingBuf = RingBuf::with_byte_size(TASK_EVENTS_BYTES, 0);

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

/// The `collect` flags of a task.
#[inline(always)]
pub fn task_flags(slot: u32) -> u32 {
    TASK_CONFIG.get(slot).copied().unwrap_or(0)
}

/// Whether userspace has threads waiting for adoption.
#[inline(always)]
pub fn adoption_pending() -> bool {
    ADOPT_GATE.get(GATE_ADOPT).is_some_and(|gate| *gate != 0)
}

/// Whether userspace is waiting for task ids to show up in an argv.
#[inline(always)]
pub fn discovery_pending() -> bool {
    ADOPT_GATE.get(GATE_DISCOVER).is_some_and(|gate| *gate != 0)
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
