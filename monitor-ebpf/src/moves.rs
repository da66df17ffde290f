//! Threads that change task after their creation: processes moved into or
//! out of a cgroup that defines a task (`cgroup`), and the lookup of the
//! task a cgroup defines.
//!
//! Not a hook. The migration hook moves the thread the kernel names (the
//! process's group leader) at once; the process's other threads cannot be
//! reached from there with a pointer the helpers take, so their counters
//! at the move are recorded in `PENDING_MOVES`, and whoever looks at such
//! a thread next settles its move before anything else: the sampling
//! pass, its release (`sched_process_free`), its creation of a thread,
//! its process's exit. CPU and disk are thereby split at the move (to the
//! scheduler's last update of a running thread's counters); socket bytes
//! such a thread moves before its move is settled (the agent runs a pass
//! as soon as it hears of the move) go to the task it was in. The hooks
//! that settle moves cost one load more while none is pending.

use core::ffi::c_void;

use aya_ebpf::{EbpfContext, helpers::generated::bpf_loop};
use monitor_common::{
    CGROUP_DEPTH, KernelCounters, MAX_PENDING_MOVES, NO_SLOT, PendingMove, SlotRef, ThreadState,
    collect, thread,
};

use crate::{
    charge::{charge_between, charge_until},
    diag,
    layout::{counters_at, field, kernel_counters, layout, read, task_ids},
    maps::{
        CGROUPS, PENDING_MOVES, THREADS, add, any_move_pending, count_joined, kernel_stats,
        moves_pending, task_config, task_record, valid_membership,
    },
};

/// `PF_EXITING` (include/linux/sched.h): the thread is in `do_exit`; the
/// kernel does not migrate such threads, so neither do we.
const PF_EXITING: u32 = 0x0000_0004;

/// Whether a typed `struct cgroup *` is on the v2 (default) hierarchy,
/// whose `hierarchy_id` is 0 (as `/proc/<pid>/cgroup`'s `0::` line says):
/// v1 hierarchies number their cgroups on their own, so their ids would
/// collide with the v2 ids in `CGROUPS`.
#[inline(always)]
pub fn on_default_hierarchy(cgroup: u64) -> bool {
    let layout = layout();
    let root: u64 = field(cgroup, layout.cgroup_root);
    root != 0 && field::<i32>(root, layout.cgroup_root_hierarchy_id) == 0
}

/// The task that a typed v2 `struct cgroup *`, or its nearest ancestor
/// within `CGROUP_DEPTH` levels, defines.
#[inline(always)]
pub fn cgroup_task(cgroup: u64) -> Option<SlotRef> {
    let layout = layout();
    let mut cgroup = cgroup;
    for _ in 0..CGROUP_DEPTH {
        if cgroup == 0 {
            return None;
        }
        let node: u64 = field(cgroup, layout.cgroup_kn);
        let id: u64 = field(node, layout.kernfs_node_id);
        // SAFETY: a plain value, copied out at once.
        if let Some(target) = unsafe { CGROUPS.get(id) }.copied() {
            return live(target);
        }
        // `cgroup.self.parent` is the parent's `self` css; its `cgroup`
        // is the parent (NULL above the root).
        let parent: u64 = field(cgroup, layout.cgroup_parent);
        if parent == 0 {
            return None;
        }
        cgroup = field(parent, layout.css_cgroup);
    }
    None
}

/// The task the v2 cgroup of a typed `struct task_struct *` defines.
#[inline(always)]
pub fn thread_cgroup_task(task: u64) -> Option<SlotRef> {
    let layout = layout();
    let css_set: u64 = field(task, layout.task_cgroups);
    if css_set == 0 {
        return None;
    }
    cgroup_task(field(css_set, layout.css_set_dfl_cgrp))
}

/// `target` if its slot still holds that task.
#[inline(always)]
fn live(target: SlotRef) -> Option<SlotRef> {
    let config = task_config(target.slot)?;
    (config.generation == target.generation && config.flags != 0).then_some(target)
}

/// Settles the move waiting for `task` (a typed `struct task_struct *`),
/// if any. `released`: the thread can no longer run (its release), so it
/// is not given storage.
#[inline(always)]
pub fn settle<C: EbpfContext>(ctx: &C, task: u64, released: bool) {
    if any_move_pending() {
        settle_pending(ctx, task, released);
    }
}

/// The rare part of [`settle`], out of line so that the hooks' common
/// path stays small.
#[inline(never)]
fn settle_pending<C: EbpfContext>(ctx: &C, task: u64, released: bool) {
    let (tid, _) = task_ids(task);
    // SAFETY: a plain value, copied out at once.
    let Some(pending) = (unsafe { PENDING_MOVES.get(tid) }).copied() else {
        return;
    };
    if PENDING_MOVES.remove(tid).is_err() {
        return; // settled by another CPU meanwhile
    }
    if let Some(count) = moves_pending() {
        add(count, u64::MAX); // minus one
    }
    apply(ctx, task, &pending, released);
}

/// Moves `task` (a typed `struct task_struct *`): what it consumed up to
/// `pending.at_move` is charged to the task it is in, which it leaves
/// (counted as released there), and what follows is `pending.to`'s.
#[inline(always)]
pub fn apply<C: EbpfContext>(ctx: &C, task: u64, pending: &PendingMove, released: bool) {
    let to = pending.to;
    let at_move = pending.at_move.as_array();
    let mut kept: Option<&'static mut ThreadState> = None;
    if let Some(state) = THREADS.get(task) {
        if state.flags & thread::SPAWNER != 0 {
            return; // `propmon run`'s own thread, about to start a task
        }
        if let Some((state, config)) = valid_membership(task, state) {
            if state.slot == to.slot && state.generation == to.generation {
                return; // it is there already
            }
            if let Some(record) = task_record(state.slot) {
                charge_until(&at_move, state, config.flags, record);
                add(&mut record.threads_freed, 1);
                let (pid, tgid) = task_ids(task);
                if pid == tgid {
                    add(&mut record.procs_exited, 1);
                }
            }
            kept = Some(state);
        }
    }
    let joined = if to.slot == NO_SLOT { None } else { live(to) };
    let (Some(to), Some(config)) = (joined, joined.and_then(|to| task_config(to.slot))) else {
        if kept.is_some() {
            THREADS.remove(task); // a stranger from now on
        }
        return;
    };
    let Some(record) = task_record(to.slot) else {
        return;
    };
    count_joined(task, to.slot);
    if released {
        // Its counters are final and nobody will look at it again.
        charge_between(&at_move, &kernel_counters(task), config.flags, record);
        add(&mut record.threads_freed, 1);
        if kept.is_some() {
            THREADS.remove(task);
        }
        return;
    }
    let flags = config.flags & collect::ALL;
    if let Some(state) = kept {
        // Charged up to the move already: its marks are there, and what
        // its sockets count from now on is the new task's.
        state.slot = to.slot;
        state.generation = to.generation;
        state.flags = flags;
        return;
    }
    let mut initial = ThreadState {
        slot: to.slot,
        generation: to.generation,
        flags,
        charged: pending.at_move,
        ..ThreadState::default()
    };
    match THREADS.get_or_insert(task, &mut initial) {
        Some(state) => {
            // Storage that was there (a stranger's, whose socket counters
            // may still grow) keeps its socket counters, all charged.
            // Field by field: a whole new value would take another
            // ThreadState of stack, past the verifier's 512 bytes.
            state.slot = to.slot;
            state.generation = to.generation;
            state.flags = flags;
            state.charged = pending.at_move;
            state.net_charged = state.net;
            state.last_socket = 0;
        }
        None => {
            add(&mut record.threads_freed, 1); // it will never be released here
            diag::storage_failure(ctx, task, to.slot);
        }
    }
}

/// Records a move to `to` for every thread of `moved`'s process but
/// `moved` itself, with its counters now: they settle at the next look at
/// each of them. The caller holds the kernel's threadgroup lock (a
/// migration), so the thread list does not change meanwhile.
#[inline(always)]
pub fn record_other_threads<C: EbpfContext>(ctx: &C, moved: u64, to: SlotRef) {
    let layout = layout();
    let signal: u64 = field(moved, layout.task_signal);
    if signal == 0 {
        return;
    }
    let (tid, tgid) = task_ids(moved);
    let head = signal + u64::from(layout.signal_thread_head);
    let mut walk = ThreadWalk {
        head,
        node: head,
        moved_tid: tid,
        to,
        complete: 0,
        lost: 0,
    };
    // SAFETY: `record_thread` has the callback signature bpf_loop expects,
    // and `walk` outlives the call.
    unsafe {
        bpf_loop(
            MAX_PENDING_MOVES,
            record_thread as *mut c_void,
            (&raw mut walk).cast(),
            0,
        )
    };
    if walk.complete == 0 {
        count_lost(); // more threads than a walk takes
        walk.lost = 1;
    }
    if walk.lost != 0 {
        diag::moves_lost(ctx, tgid);
    }
}

/// Counts a thread whose move could not be recorded. Counted in the map
/// rather than in the walk's state: a count that grows with every step
/// would keep the verifier from seeing that the loop's states repeat.
#[inline(always)]
fn count_lost() {
    if let Some(stats) = kernel_stats() {
        add(&mut stats.move_failures, 1);
    }
}

/// State shared with the `bpf_loop` callback (on the caller's stack).
#[repr(C)]
struct ThreadWalk {
    /// `&signal->thread_head`: where the list starts and ends.
    head: u64,
    /// The list node reached (`&task->thread_node` of a thread).
    node: u64,
    moved_tid: u32,
    to: SlotRef,
    /// 1 once the walk is back at the head.
    complete: u32,
    /// 1 if some thread's move could not be recorded.
    lost: u32,
}

/// Records the move of the thread after `walk.node`; returns 1 to stop.
///
/// The list is `signal->thread_head`, linked through each thread's
/// `thread_node`, and read with `bpf_probe_read_kernel`: a `struct
/// list_head` starts with `next` (include/linux/types.h).
#[inline(never)]
extern "C" fn record_thread(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the `ThreadWalk` of the caller.
    let walk = unsafe { &mut *ctx.cast::<ThreadWalk>() };
    let Some(next) = read::<u64>(walk.node, 0) else {
        return 1;
    };
    if next == walk.head || next == 0 {
        walk.complete = 1;
        return 1;
    }
    walk.node = next;
    let layout = layout();
    let thread = next - u64::from(layout.task_thread_node);
    let Some(tid) = read::<i32>(thread, u64::from(layout.task_pid)) else {
        count_lost();
        walk.lost = 1;
        return 0;
    };
    let tid = tid as u32;
    if tid == walk.moved_tid {
        return 0;
    }
    let flags = read::<u32>(thread, u64::from(layout.task_flags)).unwrap_or(PF_EXITING);
    if flags & PF_EXITING != 0 {
        return 0;
    }
    let Some(at_move) = counters_at(thread) else {
        count_lost();
        walk.lost = 1;
        return 0;
    };
    if !record(tid, walk.to, at_move) {
        count_lost();
        walk.lost = 1;
    }
    0
}

/// Records one pending move. A thread with one pending already (two moves
/// before anyone looked at it) keeps only the last: what it did between
/// the two goes to the task it was in before the first.
#[inline(always)]
fn record(tid: u32, to: SlotRef, at_move: KernelCounters) -> bool {
    let Some(count) = moves_pending() else {
        return false;
    };
    // SAFETY: only tested for presence.
    let replacing = unsafe { PENDING_MOVES.get(tid) }.is_some();
    if !replacing {
        // Counted first, so that the hooks look before the entry exists.
        add(count, 1);
    }
    if PENDING_MOVES
        .insert(tid, PendingMove { to, at_move }, 0)
        .is_err()
    {
        if !replacing {
            add(count, u64::MAX);
        }
        return false;
    }
    true
}
