//! Exec discovery: a Propeller host runtime runs `.../proplet_<task-id>.wasm`,
//! so a process that execs with that in its argv becomes the task's root,
//! and everything it creates follows by `lifecycle`. Decided in the kernel
//! at exec, so even a 5 ms task is counted from its first instruction.
//!
//! Hook: `sched_process_exec` (tp_btf, Linux 5.5+), in the new image's
//! context: argv is in its memory between `mm->arg_start` and `arg_end`.
//! Does nothing unless userspace waits for a task id (`DISCOVER` gate).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_task,
        generated::{bpf_loop, bpf_probe_read_user},
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use monitor_common::{
    DISCOVERY_ARGV_BYTES, DISCOVERY_ID_BYTES, DISCOVERY_PREFIX, DISCOVERY_SUFFIX, TaskEvent,
};

use crate::{
    layout::{layout, read},
    lifecycle::adopt_process_root,
    maps::{
        ARGV_SCRATCH, Argv, DISCOVER, TASK_EVENTS, add, discovery_pending, kernel_stats,
        tracked_thread,
    },
};

/// bpf_ringbuf_output flag (include/uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;

#[btf_tracepoint(function = "sched_process_exec")]
pub fn exec_discovery(_ctx: BtfTracePointContext) -> u32 {
    if !discovery_pending() {
        return 0;
    }
    // SAFETY: no preconditions; exec runs in the process itself.
    let task = unsafe { bpf_get_current_task() };
    if tracked_thread(task).is_some() {
        return 0; // already part of a task
    }
    let Some(argv) = ARGV_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, used by this program only, which does not nest.
    let argv = unsafe { &mut *argv };
    let Some(len) = read_argv(task, argv) else {
        if let Some(stats) = kernel_stats() {
            add(&mut stats.argv_read_failures, 1);
        }
        return 0;
    };
    // One search, one candidate: the verifier checks each extra attempt
    // once per way the previous one can fail, which does not scale.
    let Some(at) = find_file_name(argv, len) else {
        return 0;
    };
    if let Some(slot) = task_at(argv, at, len) {
        adopt_process_root(task, slot);
        let event = TaskEvent {
            slot,
            kind: TaskEvent::DISCOVERED,
        };
        let _ = TASK_EVENTS.output(event, BPF_RB_NO_WAKEUP);
    }
    0
}

/// Copies argv into the scratch buffer; its length.
#[inline(always)]
fn read_argv(task: u64, argv: &mut Argv) -> Option<usize> {
    let layout = layout();
    let mm = read::<u64>(task, layout.task_mm)?;
    let start = read::<u64>(mm, layout.mm_arg_start)?;
    let end = read::<u64>(mm, layout.mm_arg_end)?;
    let len = (end.saturating_sub(start) as usize).min(DISCOVERY_ARGV_BYTES);
    // SAFETY: the destination holds DISCOVERY_ARGV_BYTES >= len bytes.
    let ret = unsafe {
        bpf_probe_read_user(
            argv.bytes.as_mut_ptr().cast(),
            len as u32,
            start as *const c_void,
        )
    };
    (ret == 0).then_some(len)
}

/// Position just after the last `proplet_` that starts a file name (after
/// a `/` or at the start of an argument): the module is the last path
/// component, so a directory named `proplet_...` does not hide it.
///
/// The search runs under `bpf_loop` (Linux 5.17+): a plain loop over 2 KiB
/// of unknown bytes is more than the verifier will follow.
#[inline(always)]
fn find_file_name(argv: &mut Argv, len: usize) -> Option<usize> {
    let mut scan = Scan {
        len: len as u64,
        found_at: u64::MAX,
    };
    if len >= 8 && argv.bytes[..8] == *DISCOVERY_PREFIX {
        scan.found_at = 8; // the first argument starts with the prefix
    }
    // SAFETY: `scan_position` has the callback signature bpf_loop expects,
    // and `scan` outlives the call.
    let ret = unsafe {
        bpf_loop(
            (DISCOVERY_ARGV_BYTES - 8) as u32,
            scan_position as *mut c_void,
            (&raw mut scan).cast(),
            0,
        )
    };
    (ret >= 0 && scan.found_at != u64::MAX)
        .then_some((scan.found_at as usize) & (DISCOVERY_ARGV_BYTES - 1))
}

/// State shared with the `bpf_loop` callback (on the caller's stack).
#[repr(C)]
struct Scan {
    len: u64,
    found_at: u64,
}

/// Looks at argv position `index + 1`; returns 1 to stop the loop.
#[inline(never)]
extern "C" fn scan_position(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the `Scan` given by `find_file_name`.
    let scan = unsafe { &mut *ctx.cast::<Scan>() };
    let i = index as usize + 1;
    if i + 8 > scan.len as usize || i + 8 > DISCOVERY_ARGV_BYTES {
        return 1;
    }
    let Some(argv) = ARGV_SCRATCH.get_ptr(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch filled by the caller, which waits for us.
    let argv = unsafe { &*argv };
    // SAFETY: i + 8 <= DISCOVERY_ARGV_BYTES.
    let word = unsafe { core::ptr::read_unaligned(argv.bytes.as_ptr().add(i).cast::<u64>()) };
    if word == u64::from_le_bytes(*DISCOVERY_PREFIX)
        && let Some(&before) = argv.bytes.get(i - 1)
        && (before == b'/' || before == 0)
    {
        scan.found_at = (i + 8) as u64;
    }
    0
}

/// The task whose id sits at `at`, followed by `.wasm`.
#[inline(always)]
fn task_at(argv: &mut Argv, at: usize, len: usize) -> Option<u32> {
    argv.id = [0; DISCOVERY_ID_BYTES];
    let mut id_len = DISCOVERY_ID_BYTES;
    for k in 0..DISCOVERY_ID_BYTES {
        let i = (at + k) & (DISCOVERY_ARGV_BYTES - 1);
        if at + k >= len {
            return None;
        }
        let byte = argv.bytes[i];
        if byte == b'.' {
            id_len = k;
            break;
        }
        if byte == 0 || byte == b'/' {
            return None;
        }
        argv.id[k] = byte;
    }
    if id_len == 0 || id_len == DISCOVERY_ID_BYTES {
        return None;
    }
    for (j, expected) in DISCOVERY_SUFFIX.iter().enumerate() {
        let position = at + id_len + j;
        if position >= len || argv.bytes[position & (DISCOVERY_ARGV_BYTES - 1)] != *expected {
            return None;
        }
    }
    // SAFETY: plain value copied out at once.
    let slot = unsafe { DISCOVER.get(argv.id) }.copied()?;
    // One root per task: a later exec with the same module path is not it.
    let _ = DISCOVER.remove(argv.id);
    Some(slot)
}
