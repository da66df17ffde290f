//! Task membership: which threads belong to which task, decided at creation.
//!
//! Hooks (tp_btf, Linux 5.5+; the `group_dead` argument of
//! `sched_process_exit` exists since 6.16). None of them runs per context
//! switch or per I/O; for a thread outside every task each costs one
//! task-local storage lookup.
//! - `task_newtask` (in `copy_process`, creator's context, before the new
//!   thread first runs): a thread created by a member joins its task, so
//!   grandchildren, re-parented daemons, 1 ms processes and io_uring
//!   workers are all counted. A thread marked as a spawner (`propmon run`)
//!   starts the task with the first thread it creates.
//! - `sched_process_exit` (the exiting thread's context): the last thread
//!   of a process counts it out and tells userspace.
//! - `sched_process_free` (RCU callback, softirq): the thread can no longer
//!   run and its counters are final: its last part is charged (the cost of
//!   exiting included) and it counts as released. Its storage goes with it.
//!
//! Threads that ran before their task existed are given storage by
//! userspace (`--attach`, through a pidfd) or by exec discovery.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use monitor_common::{SlotRef, TaskEvent, ThreadState, collect, thread};

use crate::{
    charge::charge,
    diag,
    events::{emit, event},
    layout::task_ids,
    maps::{THREADS, add, current_task, member, task_config, task_record, valid_membership},
};

#[btf_tracepoint(function = "task_newtask")]
pub fn task_newtask(ctx: BtfTracePointContext) -> u32 {
    let child: u64 = ctx.arg::<u64>(0);
    let creator = current_task();
    let Some(state) = THREADS.get(creator) else {
        return 0;
    };
    let target = SlotRef {
        slot: state.slot,
        generation: state.generation,
    };
    if state.flags & thread::SPAWNER != 0 {
        // One-shot: only the command itself starts the task.
        THREADS.remove(creator);
    } else if valid_membership(creator, state).is_none() {
        return 0;
    }
    join_new_thread(&ctx, child, target);
    0
}

/// Makes a thread that has not run yet a member of `target`: it starts
/// with zeroed counters (copy_process), so all of them are the task's.
#[inline(always)]
fn join_new_thread(ctx: &BtfTracePointContext, task: u64, target: SlotRef) {
    let Some(config) = task_config(target.slot) else {
        return;
    };
    if config.generation != target.generation {
        return;
    }
    let mut initial = ThreadState {
        slot: target.slot,
        generation: target.generation,
        flags: config.flags & collect::ALL,
        ..ThreadState::default()
    };
    if THREADS.get_or_insert(task, &mut initial).is_none() {
        diag::storage_failure(ctx, task, target.slot);
        return;
    }
    count_joined(task, target.slot);
}

/// Counts a thread (and, for a thread-group leader, its process) in.
#[inline(always)]
pub fn count_joined(task: u64, slot: u32) {
    let Some(record) = task_record(slot) else {
        return;
    };
    add(&mut record.threads_started, 1);
    let (pid, tgid) = task_ids(task);
    if pid == tgid {
        add(&mut record.procs_started, 1);
    }
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg::<u64>(0);
    let group_dead = ctx.arg::<u64>(1) & 0xff != 0;
    if !group_dead {
        return 0;
    }
    let Some((state, _)) = member(task) else {
        return 0;
    };
    let (slot, generation) = (state.slot, state.generation);
    if let Some(record) = task_record(slot) {
        add(&mut record.procs_exited, 1);
    }
    let (_, tgid) = task_ids(task);
    emit(
        &ctx,
        &event(TaskEvent::PROCESS_EXITED, slot, generation, tgid),
    );
    0
}

#[btf_tracepoint(function = "sched_process_free")]
pub fn sched_process_free(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg::<u64>(0);
    let Some((state, config)) = member(task) else {
        return 0;
    };
    let Some(record) = task_record(state.slot) else {
        return 0;
    };
    charge(task, state, config.flags, record);
    add(&mut record.threads_freed, 1);
    0
}
