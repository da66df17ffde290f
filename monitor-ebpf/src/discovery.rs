//! Exec discovery: a Propeller host runtime runs `.../proplet_<task-id>.wasm`,
//! so a process that execs with that file name in its argv becomes the
//! task's root, and everything it creates follows (`membership`). Decided
//! in the kernel at exec, so even a 5 ms task is counted from its first
//! instruction.
//!
//! Hook: `sched_process_exec` (tp_btf, Linux 5.5+), in the new image's
//! context: argv is in its memory between `mm->arg_start` and `arg_end`.
//! Runs only in Propeller mode (`switch::DISCOVERY`).
//!
//! - The file name must be exactly `proplet_<id>.wasm` (`.wasm.log` is
//!   not the module), and, when the proplet process is known, the process
//!   must descend from it (`switch::REQUIRE_LINEAGE`): nobody else can
//!   claim a task.
//! - A member of a task keeps its task across exec, except a member of the
//!   proplet's own slot: discovery wins over in-process attribution.
//! - A module whose start message has not been handled yet still gets a
//!   root: the process takes a provisional slot from `PROVISIONAL_POOL`
//!   and userspace hands it to the task when its start message comes.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_probe_read_user},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use monitor_common::{
    DISCOVERY_ARGV_BYTES, DISCOVERY_ID_BYTES, DISCOVERY_PREFIX, DISCOVERY_SUFFIX, SlotRef,
    TaskConfig, TaskEvent, ThreadState, collect, slot, switch, thread,
};

use crate::{
    charge::{charge, start_from_now},
    diag,
    events::{emit, event},
    layout::{field, layout, task_ids},
    maps::{
        ARGV_SCRATCH, Argv, DISCOVER, PROVISIONAL, PROVISIONAL_POOL, THREADS, add, count_joined,
        current_task, switch_on, task_config, task_record, valid_membership,
    },
};

#[btf_tracepoint(function = "sched_process_exec")]
pub fn exec_discovery(ctx: BtfTracePointContext) -> u32 {
    if !switch_on(switch::DISCOVERY) {
        return 0;
    }
    let task = current_task();
    let yielding = match yielding_member(task) {
        Membership::Member => return 0, // its execs stay its task's
        Membership::Yielding(state, config) => Some((state, config)),
        Membership::Stranger => None,
    };
    let Some(argv) = ARGV_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, used by this program only, which does not nest.
    let argv = unsafe { &mut *argv };
    let (_, tgid) = task_ids(task);
    let Some(len) = read_argv(task, argv) else {
        diag::argv_unreadable(&ctx, tgid);
        return 0;
    };
    // One search, one candidate: the verifier checks each extra attempt
    // once per way the previous one can fail, which does not scale.
    let Some(at) = find_file_name(argv, len) else {
        return 0;
    };
    if !module_id_at(argv, at, len) {
        return 0;
    }
    let lineage = yielding
        .as_ref()
        .is_some_and(|(_, config)| config.flags & slot::PROPLET_LINEAGE != 0);
    if switch_on(switch::REQUIRE_LINEAGE) && !lineage {
        diag::lineage_refused(&ctx, tgid);
        return 0;
    }
    let (kind, target) = match claim_target(&ctx, &argv.id, tgid) {
        Some(found) => found,
        None => return 0,
    };
    become_root(&ctx, task, yielding, target);
    let mut announced = event(kind, target.slot, target.generation, tgid);
    announced.task_id = argv.id;
    emit(&ctx, &announced, true);
    0
}

enum Membership {
    /// A member of a task, which keeps its execs.
    Member,
    /// A member of the proplet's slot, which yields to discovery.
    Yielding(&'static mut ThreadState, TaskConfig),
    Stranger,
}

#[inline(always)]
fn yielding_member(task: u64) -> Membership {
    let Some(state) = THREADS.get(task) else {
        return Membership::Stranger;
    };
    if state.flags & thread::SPAWNER != 0 {
        return Membership::Stranger;
    }
    match valid_membership(task, state) {
        Some((state, config)) if config.flags & slot::YIELDS_TO_DISCOVERY != 0 => {
            Membership::Yielding(state, config)
        }
        Some(_) => Membership::Member,
        None => Membership::Stranger,
    }
}

/// The task waiting for this module, else a provisional slot for it (one
/// per id); the event kind to report.
#[inline(always)]
fn claim_target(
    ctx: &BtfTracePointContext,
    id: &[u8; DISCOVERY_ID_BYTES],
    tgid: u32,
) -> Option<(u32, SlotRef)> {
    // SAFETY: plain value copied out at once.
    if let Some(target) = unsafe { DISCOVER.get(id) }.copied() {
        // One root per task: a later exec with the same module is not it.
        let _ = DISCOVER.remove(id);
        return Some((TaskEvent::DISCOVERED, target));
    }
    // SAFETY: as above.
    if unsafe { PROVISIONAL.get(id) }.is_some() {
        return None; // a root for this id exists already
    }
    let Some(target) = PROVISIONAL_POOL.pop().ok().flatten() else {
        diag::provisional_exhausted(ctx, tgid);
        return None;
    };
    if PROVISIONAL.insert(id, target, 0).is_err() {
        // The root still counts; only a second exec of the same module
        // would not be recognised as one.
        diag::discovery_map_full(ctx, tgid);
    }
    Some((TaskEvent::PROVISIONAL, target))
}

/// Makes the (single-threaded, just exec'd) current process the root of
/// `target`, counting from now. A member of the proplet's slot first
/// settles what it consumed there, and leaves it.
#[inline(always)]
fn become_root(
    ctx: &BtfTracePointContext,
    task: u64,
    yielding: Option<(&'static mut ThreadState, TaskConfig)>,
    target: SlotRef,
) {
    let Some(config) = task_config(target.slot) else {
        return;
    };
    let flags = config.flags & collect::ALL;
    let state = match yielding {
        Some((state, old_config)) => {
            if let Some(old) = task_record(state.slot) {
                charge(task, state, old_config.flags, old);
                add(&mut old.threads_freed, 1);
                add(&mut old.procs_exited, 1);
            }
            state
        }
        None => {
            let mut initial = ThreadState::default();
            let Some(state) = THREADS.get_or_insert(task, &mut initial) else {
                diag::storage_failure(ctx, task, target.slot);
                return;
            };
            state
        }
    };
    *state = ThreadState {
        slot: target.slot,
        generation: target.generation,
        flags,
        ..ThreadState::default()
    };
    start_from_now(task, state);
    count_joined(task, target.slot);
}

/// Copies argv into the scratch buffer; its length.
#[inline(always)]
fn read_argv(task: u64, argv: &mut Argv) -> Option<usize> {
    let mm: u64 = field(task, layout().task_mm);
    if mm == 0 {
        return None;
    }
    let start: u64 = field(mm, layout().mm_arg_start);
    let end: u64 = field(mm, layout().mm_arg_end);
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

/// Whether `proplet_` at `at - 8` is followed by an id and `.wasm` ending
/// the argument (exactly the module's file name); the id is left in
/// `argv.id`, NUL padded.
#[inline(always)]
fn module_id_at(argv: &mut Argv, at: usize, len: usize) -> bool {
    argv.id = [0; DISCOVERY_ID_BYTES];
    let mut id_len = DISCOVERY_ID_BYTES;
    for k in 0..DISCOVERY_ID_BYTES {
        let i = (at + k) & (DISCOVERY_ARGV_BYTES - 1);
        if at + k >= len {
            return false;
        }
        let byte = argv.bytes[i];
        if byte == b'.' {
            id_len = k;
            break;
        }
        if byte == 0 || byte == b'/' {
            return false;
        }
        argv.id[k] = byte;
    }
    if id_len == 0 || id_len == DISCOVERY_ID_BYTES {
        return false;
    }
    // `.wasm` and the NUL that ends the argument.
    for j in 0..=DISCOVERY_SUFFIX.len() {
        let expected = DISCOVERY_SUFFIX.get(j).copied().unwrap_or(0);
        let position = at + id_len + j;
        if position >= len || argv.bytes[position & (DISCOVERY_ARGV_BYTES - 1)] != expected {
            return false;
        }
    }
    true
}
