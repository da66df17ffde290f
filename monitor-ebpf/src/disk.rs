//! Disk bytes per task, with the semantics of `/proc/<pid>/io`.
//!
//! Hooks (tp_btf), all in the context of the task doing the I/O:
//! - `block_bio_queue`: fired once per bio when it enters the block layer.
//!   Counted only for top-level submissions (`current->bio_list` is NULL),
//!   which are the `submit_bio()` calls where the kernel charges
//!   `read_bytes`; bios that a stacked device (dm, md) re-submits from inside
//!   its driver are not counted twice. Reads give `read_bytes`; writes give
//!   the bytes the task submitted itself (direct I/O, and writeback it runs
//!   in `fsync`), and among them the direct-I/O writes.
//! - `writeback_dirty_folio`: fired from `folio_account_dirtied`, where the
//!   kernel charges `write_bytes` for a newly dirtied page-cache folio. Its
//!   later writeback, by a kworker or by the task's own `fsync`, is not
//!   charged again.
//! - Cancelled writes (dirty pages truncated before writeback) have no hook:
//!   `charge_cancelled_writes` takes the growth of the thread's own
//!   `ioac.cancelled_write_bytes`, from `sched_stat_runtime` (whenever the
//!   thread stops running) and from `sched_process_free` (its final figure).
//!
//! fentry/submit_bio would be the exact spot, but this kernel refuses
//! fentry/fexit programs (EPERM under lockdown=integrity).

use aya_ebpf::{
    helpers::bpf_get_current_task, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use monitor_common::{KernelLayout, TaskCounters, ThreadState, collect};

use crate::{
    layout::{field, layout, read},
    lifecycle::current_counters,
    maps::add,
};

/// Width of the operation field of `bi_opf` (REQ_OP_BITS, a #define in
/// include/linux/blk_types.h, so not in BTF).
const REQ_OP_MASK: u32 = (1 << 8) - 1;
/// `enum req_op` values (include/linux/blk_types.h).
const REQ_OP_READ: u32 = 0;
const REQ_OP_WRITE: u32 = 1;

#[btf_tracepoint(function = "block_bio_queue")]
pub fn block_bio_queue(ctx: BtfTracePointContext) -> u32 {
    let Some(counters) = current_counters(collect::DISK) else {
        return 0;
    };
    let layout = layout();
    if !is_top_level_submission(&layout) {
        return 0;
    }
    let bio: u64 = ctx.arg::<u64>(0);
    let opf = field::<u32>(bio, layout.bio_opf);
    let size = u64::from(field::<u32>(bio, layout.bio_size));
    match opf & REQ_OP_MASK {
        REQ_OP_READ => add(&mut counters.disk_read_bytes, size),
        REQ_OP_WRITE => {
            add(&mut counters.disk_submitted_write_bytes, size);
            if is_direct_io_write(opf, &layout) {
                add(&mut counters.disk_direct_write_bytes, size);
            }
        }
        _ => {}
    }
    0
}

/// `current->bio_list` is set while a driver's `submit_bio` runs, so that
/// the bios it submits are queued rather than recursed into.
#[inline(always)]
fn is_top_level_submission(layout: &KernelLayout) -> bool {
    // SAFETY: no preconditions.
    let current = unsafe { bpf_get_current_task() };
    read::<u64>(current, layout.task_bio_list) == Some(0)
}

/// Direct-I/O writes are submitted with REQ_SYNC | REQ_IDLE (iomap,
/// fs/direct-io.c and block-device direct I/O alike); writeback never sets
/// REQ_IDLE, and journal writes, which may, are REQ_META.
#[inline(always)]
fn is_direct_io_write(opf: u32, layout: &KernelLayout) -> bool {
    let idle = opf & (1 << layout.req_idle_bit) != 0;
    let meta = opf & (1 << layout.req_meta_bit) != 0;
    idle && !meta
}

#[btf_tracepoint(function = "writeback_dirty_folio")]
pub fn writeback_dirty_folio(ctx: BtfTracePointContext) -> u32 {
    if let Some(counters) = current_counters(collect::DISK) {
        add(
            &mut counters.disk_dirtied_bytes,
            folio_bytes(ctx.arg::<u64>(0)),
        );
    }
    0
}

/// Charges what the thread cancelled since the last call; `task` is a
/// tracepoint's typed `struct task_struct *`.
#[inline(always)]
pub fn charge_cancelled_writes(task: u64, thread: &mut ThreadState, counters: &mut TaskCounters) {
    let cancelled = field::<u64>(task, layout().task_cancelled_write_bytes);
    if cancelled > thread.cancelled_write_bytes_seen {
        add(
            &mut counters.disk_cancelled_write_bytes,
            cancelled - thread.cancelled_write_bytes_seen,
        );
        thread.cancelled_write_bytes_seen = cancelled;
    }
}

/// `folio_size()` of a tracepoint's typed `struct folio *`: one page, or
/// `_nr_pages` pages for a large folio (`PG_head` set).
#[inline(always)]
fn folio_bytes(folio: u64) -> u64 {
    let layout = layout();
    let page = u64::from(layout.page_size);
    let flags = field::<u64>(folio, layout.folio_flags);
    if flags & (1 << layout.pg_head_bit) == 0 {
        return page;
    }
    page * u64::from(field::<u32>(folio, layout.folio_nr_pages))
}
