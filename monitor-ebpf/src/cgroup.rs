//! Tasks defined by a cgroup (`propmon agent --attach-cgroup`): a process
//! moved into such a cgroup (v2 only), or into a cgroup below it, joins
//! its task, counting from the move; a member moved out of it leaves the
//! task, what it consumed until then staying charged there.
//!
//! Hook: `cgroup:cgroup_attach_task` (tp_btf, Linux 4.11+; the `task`
//! argument is the group leader, `threadgroup` says whether its whole
//! process moved), fired once a migration succeeded, in the context of
//! whoever moved the process (a write to `cgroup.procs`: systemd, a
//! container runtime, a shell), with the kernel's threadgroup lock held
//! for writing, so the process's thread list is stable. It runs on
//! migrations only, on every hierarchy (v1 ones are ignored): rare. Note
//! that the kernel formats the destination cgroup's path for this
//! tracepoint, on every migration, only while a program is attached.
//!
//! The moved thread changes task at once; its process's other threads
//! follow when next looked at (`moves`). Counts nothing itself. Processes
//! created straight into a cgroup (`clone3` with `CLONE_INTO_CGROUP`, as
//! systemd starts services) are handled at creation (`membership`), and
//! those in the cgroup when the task starts are attached by userspace.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use monitor_common::{NO_SLOT, PendingMove, SlotRef, TaskEvent, slot, switch};

use crate::{
    events::{emit, event},
    layout::{counters_of, task_ids},
    maps::{member, switch_on},
    moves::{apply, cgroup_task, on_default_hierarchy, record_other_threads},
};

#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: BtfTracePointContext) -> u32 {
    if !switch_on(switch::CGROUPS) {
        return 0;
    }
    // (struct cgroup *dst_cgrp, const char *path, struct task_struct
    // *task, bool threadgroup)
    let destination: u64 = ctx.arg(0);
    let task: u64 = ctx.arg(2);
    let whole_process = ctx.arg::<u64>(3) & 0xff != 0;
    if !on_default_hierarchy(destination) {
        return 0;
    }
    let target = cgroup_task(destination);
    // Where it is now; plain values rather than an Option, whose unset
    // payload the verifier refuses to see copied.
    let mut from = SlotRef {
        slot: NO_SLOT,
        generation: 0,
    };
    let mut from_cgroup_task = false;
    if let Some((state, config)) = member(task) {
        from = SlotRef {
            slot: state.slot,
            generation: state.generation,
        };
        from_cgroup_task = config.flags & slot::CGROUP != 0;
    }
    let to = match target {
        Some(target) if target == from => return 0,
        Some(target) => target,
        // Out of the cgroups of its task: it leaves.
        None if from_cgroup_task => SlotRef {
            slot: NO_SLOT,
            generation: 0,
        },
        // Neither from nor to a cgroup that defines a task.
        None => return 0,
    };
    let pending = PendingMove {
        to,
        at_move: counters_of(task),
    };
    apply(&ctx, task, &pending, false);
    if whole_process {
        record_other_threads(&ctx, task, to);
    }
    // The agent settles the other threads at once (a pass) and looks at
    // the task the process left, which may have no process left.
    let told = if from.slot == NO_SLOT { to } else { from };
    let (_, tgid) = task_ids(task);
    emit(
        &ctx,
        &event(TaskEvent::MOVED, told.slot, told.generation, tgid),
        true,
    );
    0
}
