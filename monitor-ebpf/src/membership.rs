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
//!   starts the task with the first thread it creates. A process created
//!   straight into a cgroup (`CLONE_INTO_CGROUP`, as systemd starts
//!   services) belongs to the task that cgroup defines, if any, and not
//!   to the task of a creator whose task is another cgroup's.
//! - `sched_process_exit` (the exiting thread's context): what the thread
//!   consumed so far is charged; the last thread of a process counts it
//!   out and tells userspace.
//! - `sched_process_free` (RCU callback, softirq): the thread can no longer
//!   run and its counters are final: its last part is charged (the cost of
//!   exiting included) and it counts as released. Its storage goes with it.
//!
//! Threads that ran before their task existed are given storage by
//! userspace (`--attach`, through a pidfd), by exec discovery, or by a
//! migration into a cgroup (`cgroup`). Each hook first settles a pending
//! move of the thread it looks at (`moves`: one load while none is).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use monitor_common::{SlotRef, TaskEvent, ThreadState, collect, slot, switch, thread};

use crate::{
    charge::charge,
    diag,
    events::{emit, event},
    layout::task_ids,
    maps::{
        THREADS, add, count_joined, current_task, member, switch_on, task_config, task_record,
        valid_membership,
    },
    moves::{settle, thread_cgroup_task},
};

/// `clone3()` flag (include/uapi/linux/sched.h): the child starts in the
/// cgroup the caller named, not in the caller's.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

#[btf_tracepoint(function = "task_newtask")]
pub fn task_newtask(ctx: BtfTracePointContext) -> u32 {
    // (struct task_struct *task, u64 clone_flags)
    let child: u64 = ctx.arg::<u64>(0);
    let creator = current_task();
    settle(&ctx, creator, false);
    let into_cgroup = ctx.arg::<u64>(1) & CLONE_INTO_CGROUP != 0 && switch_on(switch::CGROUPS);
    if into_cgroup && let Some(target) = thread_cgroup_task(child) {
        join_new_thread(&ctx, child, target);
        return 0;
    }
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
    } else {
        let Some((_, config)) = valid_membership(creator, state) else {
            return 0;
        };
        if into_cgroup && config.flags & slot::CGROUP != 0 {
            return 0; // created outside the cgroups of its creator's task
        }
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

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg::<u64>(0);
    // A move not applied yet decides whose task this thread's part goes to.
    settle(&ctx, task, false);
    let Some((state, config)) = member(task) else {
        return 0;
    };
    let (slot, generation) = (state.slot, state.generation);
    let Some(record) = task_record(slot) else {
        return 0;
    };
    // Its release may come seconds later (RCU callbacks can be lazy): what
    // it consumed until now shows in the next messages already.
    charge(task, state, config.flags, record);
    let group_dead = ctx.arg::<u64>(1) & 0xff != 0;
    if !group_dead {
        return 0;
    }
    add(&mut record.procs_exited, 1);
    // Only the task's last process makes it end: wake userspace for that.
    let last = record.procs_exited >= record.procs_started;
    let (_, tgid) = task_ids(task);
    emit(
        &ctx,
        &event(TaskEvent::PROCESS_EXITED, slot, generation, tgid),
        last,
    );
    0
}

#[btf_tracepoint(function = "sched_process_free")]
pub fn sched_process_free(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg::<u64>(0);
    settle(&ctx, task, true);
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
