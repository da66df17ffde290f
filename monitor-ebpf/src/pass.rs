//! The sampling pass: one walk over every thread of the host, run by
//! userspace once per round (reading the iterator's file runs it).
//!
//! Hook: `iter/task` (a BPF task iterator, Linux 5.8+), process context of
//! the reading agent, under RCU; nothing runs in anyone else's path. For
//! each member thread it charges what the thread consumed since it was
//! last charged (CPU, disk, network: see `charge`), and for each live
//! process of a task it adds the point-in-time figures `/proc` would
//! show: threads, resident pages, open file descriptors. A thread that
//! belongs to an ended task loses its storage here, and a thread whose
//! process changed cgroup is settled (`moves`). At the end of the walk,
//! the agent's own thread is read at the offsets from BTF and compared
//! with what the kernel says of it: a cheap check of the layout.

use core::ffi::c_void;

use aya_ebpf::{EbpfContext, helpers::generated::bpf_loop};
use monitor_common::{KernelLayout, Snapshot, TaskRecord, collect, thread};

use crate::{
    charge::charge,
    diag,
    layout::{field, layout, read, task_ids},
    maps::{CONTROL, THREADS, current_task, task_record, valid_membership},
    moves::settle,
};

/// `struct bpf_iter__task` (include/linux/bpf.h): the iterator's context.
#[repr(C)]
pub struct IterTaskContext {
    meta: *const c_void,
    task: u64,
}

/// The iterator's context as aya sees program contexts (for logging).
struct Pass(*const IterTaskContext);

impl EbpfContext for Pass {
    fn as_ptr(&self) -> *mut c_void {
        self.0.cast_mut().cast()
    }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn sampling_pass(ctx: *const IterTaskContext) -> i32 {
    // SAFETY: the kernel passes a valid context; `task` is NULL once, at
    // the end of the walk.
    let task = unsafe { (*ctx).task };
    if task != 0 {
        visit(&Pass(ctx), task);
    } else {
        check_layout(&Pass(ctx));
    }
    0
}

#[inline(always)]
fn visit(ctx: &Pass, task: u64) {
    settle(ctx, task, false);
    let Some(state) = THREADS.get(task) else {
        return;
    };
    if state.flags & thread::SPAWNER != 0 {
        return;
    }
    let Some((state, config)) = valid_membership(task, state) else {
        return;
    };
    let Some(record) = task_record(state.slot) else {
        return;
    };
    charge(task, state, config.flags, record);
    add_to_snapshot(task, config.flags, record);
}

/// Reads the current thread (the agent's, which runs the pass) at the
/// offsets from BTF and compares with the kernel's own answer: thread and
/// process ids, and a live process with memory.
#[inline(always)]
fn check_layout(ctx: &Pass) {
    let current = current_task();
    let (pid, tgid) = task_ids(current);
    let ids = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let actual = (ids as u32, (ids >> 32) as u32);
    let layout = layout();
    let signal: u64 = field(current, layout.task_signal);
    let plausible = field::<u64>(current, layout.task_mm) != 0
        && signal != 0
        && field::<i32>(signal, layout.signal_live) > 0
        && field::<i32>(signal, layout.signal_nr_threads) > 0;
    if (pid, tgid) != actual || !plausible {
        diag::layout_mismatch(ctx, (pid, tgid), actual);
    }
}

/// Adds a live process's point-in-time figures to its task's snapshot.
/// Per-process figures are read at the thread-group leader, which stays
/// listed while any thread of the process is.
#[inline(always)]
fn add_to_snapshot(task: u64, flags: u32, record: &mut TaskRecord) {
    let Some(pass) = CONTROL.get(0).map(|control| control.pass) else {
        return;
    };
    if record.snapshot.pass != pass {
        record.snapshot = Snapshot {
            pass,
            ..Snapshot::default()
        };
    }
    let (pid, tgid) = task_ids(task);
    if pid != tgid {
        return;
    }
    let layout = layout();
    let signal: u64 = field(task, layout.task_signal);
    if field::<i32>(signal, layout.signal_live) <= 0 {
        return; // every thread is through do_exit: not a live process
    }
    let snapshot = &mut record.snapshot;
    snapshot.processes += 1;
    snapshot.threads += field::<i32>(signal, layout.signal_nr_threads).max(0) as u64;
    snapshot.rss_pages += resident_pages(task, layout);
    if flags & collect::FILE_DESCRIPTORS != 0 {
        snapshot.file_descriptors += open_file_descriptors(task, layout);
    }
}

/// `get_mm_rss()`: file, anonymous and shared-memory pages, each read as
/// `percpu_counter_read_positive` does, as `/proc/<pid>/stat` reports it.
#[inline(always)]
fn resident_pages(task: u64, layout: &KernelLayout) -> u64 {
    let mm: u64 = field(task, layout.task_mm);
    if mm == 0 {
        return 0; // a kernel thread, or a process past exit_mm
    }
    let mut pages = 0;
    for member in layout.rss_members {
        let offset =
            layout.mm_rss_stat + member * layout.percpu_counter_size + layout.percpu_counter_count;
        pages += field::<i64>(mm, offset).max(0) as u64;
    }
    pages
}

/// Largest descriptor table counted, in bitmap words (2^20 descriptors,
/// the default `fs.nr_open`).
const MAX_FD_WORDS: u64 = 1 << 14;

/// Bits set in the process's open-descriptor bitmap: the entries of
/// `/proc/<pid>/fd`.
#[inline(always)]
fn open_file_descriptors(task: u64, layout: &KernelLayout) -> u64 {
    let files: u64 = field(task, layout.task_files);
    if files == 0 {
        return 0;
    }
    let table: u64 = field(files, layout.files_fdt);
    if table == 0 {
        return 0;
    }
    let max_fds = u64::from(field::<u32>(table, layout.fdtable_max_fds));
    let mut count = FdCount {
        bitmap: field::<u64>(table, layout.fdtable_open_fds),
        words: max_fds.div_ceil(64).min(MAX_FD_WORDS),
        open: 0,
    };
    if count.bitmap == 0 {
        return 0;
    }
    // SAFETY: `count_word` has the callback signature bpf_loop expects,
    // and `count` outlives the call.
    unsafe {
        bpf_loop(
            count.words as u32,
            count_word as *mut c_void,
            (&raw mut count).cast(),
            0,
        )
    };
    count.open
}

/// State shared with the `bpf_loop` callback (on the caller's stack).
#[repr(C)]
struct FdCount {
    bitmap: u64,
    words: u64,
    open: u64,
}

/// Counts the bits of bitmap word `index`; returns 1 to stop.
#[inline(never)]
extern "C" fn count_word(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the `FdCount` of the caller.
    let count = unsafe { &mut *ctx.cast::<FdCount>() };
    let Some(word) = read::<u64>(count.bitmap, index * 8) else {
        return 1;
    };
    count.open += u64::from(word.count_ones());
    0
}
