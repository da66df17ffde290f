//! On-CPU time per task.
//!
//! Hook: `sched_stat_runtime` (tp_btf, Linux 5.5+). The scheduler fires it
//! each time it adds a slice to a thread's `sum_exec_runtime`, with that exact
//! slice in ns: at every context switch and at every tick, so a CPU hog that
//! is never switched out is still charged within one tick (4 ms at HZ=250).
//! Since Linux 6.8 every scheduling class reports through it. Runs with the
//! runqueue locked, IRQs off; the hottest program we have: one hash lookup,
//! and for tracked threads only, one field read (see `disk`).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use monitor_common::collect;

use crate::{
    disk,
    lifecycle::thread_of,
    maps::{add, task_counters},
};

#[btf_tracepoint(function = "sched_stat_runtime")]
pub fn sched_stat_runtime(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg::<u64>(0);
    let Some(thread) = thread_of(task) else {
        return 0;
    };
    let Some(counters) = task_counters(thread.slot) else {
        return 0;
    };
    if thread.flags & collect::CPU != 0 {
        add(&mut counters.cpu_ns, ctx.arg::<u64>(1));
    }
    if thread.flags & collect::DISK != 0 {
        // Runs whenever the thread stops running: a truncate it just did
        // shows within one slice.
        disk::charge_cancelled_writes(task, thread, counters);
    }
    0
}
