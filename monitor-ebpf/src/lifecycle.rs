//! Task membership: which threads belong to which task, decided at creation.
//!
//! Hooks (tp_btf, Linux 5.5+; the `group_dead` argument of
//! `sched_process_exit` exists since 6.16):
//! - `task_newtask` (in `copy_process`, creator's context, before the new
//!   thread first runs): a thread created by a tracked thread joins its task,
//!   so grandchildren, re-parented daemons, 1 ms processes and io_uring
//!   workers (which `sched_process_fork` does not report) are all counted.
//!   A creation by a thread listed in `SPAWN_PENDING` starts a task: that is
//!   how `propmon run` tracks its command before its first instruction.
//! - Threads that were running before their task was attached are listed
//!   by userspace in `ADOPT_PENDING` and adopted by `thread_of` the first
//!   time any hook sees them, before that hook charges anything.
//! - `sched_process_exit` (the exiting thread's context): the last thread of
//!   a process takes it out of `TRACKED_PROCS` and tells userspace.
//! - `sched_process_free` (RCU callback, softirq): the thread can no longer
//!   run, so it leaves `TRACKED_THREADS`. Its final CPU slice (the cost of
//!   exiting, charged after `sched_process_exit`) has been counted by then.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use monitor_common::{TaskEvent, ThreadState, collect};

use crate::{
    disk,
    layout::{self, layout, read},
    maps::{
        ADOPT_PENDING, SPAWN_PENDING, TASK_EVENTS, TRACKED_PROCS, TRACKED_THREADS, add,
        adoption_pending, kernel_stats, task_counters, task_flags, tracked_thread,
    },
};

#[btf_tracepoint(function = "task_newtask")]
pub fn task_newtask(ctx: BtfTracePointContext) -> u32 {
    let child: u64 = ctx.arg::<u64>(0);
    let slot = current_thread()
        .map(|creator| creator.slot)
        .or_else(take_pending_spawn);
    if let Some(slot) = slot {
        // A new thread starts with zeroed I/O accounting (copy_process).
        adopt(child, slot, 0);
    }
    0
}

/// The state of a tracked thread, adopting it first if userspace is
/// waiting for it (it was running before its task was attached).
#[inline(always)]
pub fn thread_of(task: u64) -> Option<&'static mut ThreadState> {
    if let Some(thread) = tracked_thread(task) {
        return Some(thread);
    }
    if !adoption_pending() {
        return None;
    }
    adopt_pending(task)
}

/// The counters of the current thread's task, if that task collects what
/// `flag` (a `monitor_common::collect` flag) stands for.
#[inline(always)]
pub fn current_counters(flag: u32) -> Option<&'static mut monitor_common::TaskCounters> {
    let thread = current_thread()?;
    if thread.flags & flag == 0 {
        return None;
    }
    task_counters(thread.slot)
}

/// `thread_of` the thread this program runs in.
#[inline(always)]
pub fn current_thread() -> Option<&'static mut ThreadState> {
    // SAFETY: no preconditions.
    thread_of(unsafe { bpf_get_current_task() })
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg::<u64>(0);
    let group_dead = ctx.arg::<u64>(1) & 0xff != 0;
    if !group_dead {
        return 0;
    }
    let Some(slot) = thread_of(task).map(|thread| thread.slot) else {
        return 0;
    };
    // do_exit() runs in the exiting thread, so current is `task`.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = TRACKED_PROCS.remove(tgid);
    if let Some(counters) = task_counters(slot) {
        add(&mut counters.procs_exited, 1);
    }
    let event = TaskEvent {
        slot,
        kind: TaskEvent::PROCESS_EXITED,
    };
    // No wakeup: userspace drains the ring on its own clock, and a wakeup
    // per event would cost more than the rest of this program.
    if TASK_EVENTS.output(event, BPF_RB_NO_WAKEUP).is_err()
        && let Some(stats) = kernel_stats()
    {
        add(&mut stats.event_drops, 1);
    }
    0
}

/// bpf_ringbuf_output flag (include/uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;

#[btf_tracepoint(function = "sched_process_free")]
pub fn sched_process_free(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg::<u64>(0);
    let Some(thread) = tracked_thread(task) else {
        return 0;
    };
    let slot = thread.slot;
    if let Some(counters) = task_counters(slot) {
        if thread.flags & collect::DISK != 0 {
            // Exiting (closing the last fd of an unlinked file) can still
            // cancel dirty pages after sched_process_exit: take the final figure.
            disk::charge_cancelled_writes(task, thread, counters);
        }
        add(&mut counters.threads_freed, 1);
    }
    let _ = TRACKED_THREADS.remove(task);
    0
}

/// One-shot: the slot the current thread asked its next child to start.
#[inline(always)]
fn take_pending_spawn() -> Option<u32> {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: plain u32 copied out at once.
    let slot = unsafe { SPAWN_PENDING.get(tid) }.copied()?;
    let _ = SPAWN_PENDING.remove(tid);
    Some(slot)
}

/// Adopts a running thread listed in `ADOPT_PENDING`, if it is the one
/// userspace saw (same start time) and not a later thread with its TID.
#[inline(always)]
fn adopt_pending(task: u64) -> Option<&'static mut ThreadState> {
    let layout = layout();
    let (pid, _) = layout::task_pid_tgid(task)?;
    // SAFETY: plain value copied out at once.
    let pending = unsafe { ADOPT_PENDING.get(pid) }.copied()?;
    let _ = ADOPT_PENDING.remove(pid);
    let started = read::<u64>(task, layout.task_start_boottime)?;
    if started / u64::from(layout.ns_per_clock_tick.max(1)) != pending.start_ticks {
        return None;
    }
    // Only I/O cancelled from now on is the task's.
    let cancelled = read::<u64>(task, layout.task_cancelled_write_bytes).unwrap_or(0);
    adopt(task, pending.slot, cancelled);
    tracked_thread(task)
}

/// Makes the (single-threaded, just exec'd) current process a task's root.
#[inline(always)]
pub fn adopt_process_root(task: u64, slot: u32) {
    let cancelled = read::<u64>(task, layout().task_cancelled_write_bytes).unwrap_or(0);
    adopt(task, slot, cancelled);
}

#[inline(always)]
fn adopt(task: u64, slot: u32, cancelled_write_bytes_seen: u64) {
    let Some(counters) = task_counters(slot) else {
        return;
    };
    let state = ThreadState {
        slot,
        flags: task_flags(slot),
        cancelled_write_bytes_seen,
    };
    if TRACKED_THREADS.insert(task, state, 0).is_err() {
        if let Some(stats) = kernel_stats() {
            add(&mut stats.thread_insert_failures, 1);
        }
        return;
    }
    add(&mut counters.threads_started, 1);
    let Some((pid, tgid)) = layout::task_pid_tgid(task) else {
        return;
    };
    if pid != tgid {
        return; // a new thread of an already tracked process
    }
    add(&mut counters.procs_started, 1);
    if TRACKED_PROCS.insert(tgid, slot, 0).is_err()
        && let Some(stats) = kernel_stats()
    {
        add(&mut stats.proc_insert_failures, 1);
    }
}
