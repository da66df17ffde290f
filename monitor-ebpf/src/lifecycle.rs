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
//! - `sched_process_exit` (the exiting thread's context): the last thread of
//!   a process takes it out of `TRACKED_PROCS`.
//! - `sched_process_free` (RCU callback, softirq): the thread can no longer
//!   run, so it leaves `TRACKED_THREADS`. Its final CPU slice (the cost of
//!   exiting, charged after `sched_process_exit`) has been counted by then.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use monitor_common::ThreadState;

use crate::{
    disk, layout,
    maps::{
        SPAWN_PENDING, TRACKED_PROCS, TRACKED_THREADS, add, kernel_stats, task_counters,
        tracked_slot, tracked_thread,
    },
};

#[btf_tracepoint(function = "task_newtask")]
pub fn task_newtask(ctx: BtfTracePointContext) -> u32 {
    let child: u64 = ctx.arg::<u64>(0);
    // SAFETY: no preconditions; copy_process runs in the creator.
    let creator = unsafe { bpf_get_current_task() };
    if let Some(slot) = tracked_slot(creator).or_else(take_pending_spawn) {
        adopt(child, slot);
    }
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg::<u64>(0);
    let group_dead = ctx.arg::<u64>(1) & 0xff != 0;
    if !group_dead {
        return 0;
    }
    let Some(slot) = tracked_slot(task) else {
        return 0;
    };
    // do_exit() runs in the exiting thread, so current is `task`.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = TRACKED_PROCS.remove(tgid);
    if let Some(counters) = task_counters(slot) {
        add(&mut counters.procs_exited, 1);
    }
    0
}

#[btf_tracepoint(function = "sched_process_free")]
pub fn sched_process_free(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg::<u64>(0);
    let Some(thread) = tracked_thread(task) else {
        return 0;
    };
    let slot = thread.slot;
    if let Some(counters) = task_counters(slot) {
        // Exiting (closing the last fd of an unlinked file) can still cancel
        // dirty pages after sched_process_exit: take the final figure now.
        disk::charge_cancelled_writes(task, thread, counters);
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

#[inline(always)]
fn adopt(child: u64, slot: u32) {
    let Some(counters) = task_counters(slot) else {
        return;
    };
    let state = ThreadState {
        slot,
        _padding: 0,
        // A new thread starts with zeroed I/O accounting (copy_process).
        cancelled_write_bytes_seen: 0,
    };
    if TRACKED_THREADS.insert(child, state, 0).is_err() {
        if let Some(stats) = kernel_stats() {
            add(&mut stats.thread_insert_failures, 1);
        }
        return;
    }
    add(&mut counters.threads_started, 1);
    let Some((pid, tgid)) = layout::task_pid_tgid(child) else {
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
