//! Task membership: which threads belong to which task, decided at fork.
//!
//! Hooks (tp_btf, Linux 5.5+; the `group_dead` argument of
//! `sched_process_exit` exists since 6.16):
//! - `sched_process_fork` (parent context, before the child first runs): a
//!   child of a tracked thread joins its task, so grandchildren, re-parented
//!   daemons and 1 ms processes are all counted. A fork by a thread listed in
//!   `SPAWN_PENDING` starts a task: that is how `propmon run` tracks its
//!   command before the command's first instruction.
//! - `sched_process_exit` (the exiting thread's context): the last thread of
//!   a process leaves `TRACKED_PROCS`.
//! - `sched_process_free` (RCU callback, softirq): the thread can no longer
//!   run, so it leaves `TRACKED_THREADS`. Its final CPU slice (the cost of
//!   exiting, charged after `sched_process_exit`) has been counted by then.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext,
};

use crate::{
    maps::{SPAWN_PENDING, TRACKED_PROCS, TRACKED_THREADS, kernel_stats, task_counters},
    task,
};

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> u32 {
    let parent: u64 = ctx.arg::<u64>(0);
    let child: u64 = ctx.arg::<u64>(1);
    if let Some(slot) = tracked_slot(parent).or_else(take_pending_spawn) {
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
        counters.procs_exited += 1;
    }
    0
}

#[btf_tracepoint(function = "sched_process_free")]
pub fn sched_process_free(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg::<u64>(0);
    let Some(slot) = tracked_slot(task) else {
        return 0;
    };
    let _ = TRACKED_THREADS.remove(task);
    if let Some(counters) = task_counters(slot) {
        counters.threads_freed += 1;
    }
    0
}

/// The task slot of a tracked thread.
#[inline(always)]
pub fn tracked_slot(task: u64) -> Option<u32> {
    // SAFETY: the value is a plain u32 copied out at once.
    unsafe { TRACKED_THREADS.get(task) }.copied()
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
    if TRACKED_THREADS.insert(child, slot, 0).is_err() {
        if let Some(stats) = kernel_stats() {
            stats.thread_insert_failures += 1;
        }
        return;
    }
    counters.threads_started += 1;
    let Some((pid, tgid)) = task::pid_tgid(child) else {
        return;
    };
    if pid != tgid {
        return; // a new thread of an already tracked process
    }
    counters.procs_started += 1;
    if TRACKED_PROCS.insert(tgid, slot, 0).is_err()
        && let Some(stats) = kernel_stats()
    {
        stats.proc_insert_failures += 1;
    }
}
