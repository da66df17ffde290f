//! Kernel-side diagnostics: a loss (a thread the kernel could not give its
//! task, an event the agent will not see, a full map, a kernel whose
//! structs are not where BTF says) is counted in `KernelStats`, which the
//! agent reports, and told to the agent's log through aya-log.
//!
//! Not a hook: called by the other programs, only ever on the branch where
//! something failed, never on a per-event path (the socket hooks have no
//! failure to report, and the sampling pass reaches this only for a thread
//! it cannot give storage). Each kind of loss logs at most one line a
//! minute, with the number of losses of that kind not logged since, so
//! that a storm of failures costs a counter increment each, not a log
//! record each.
//!
//! aya-log-ebpf 0.2 writes into its own ring buffer (`AYA_LOGS`) without
//! using the program context; its macros still take one, so the callers
//! pass theirs down on the failure branch only.

use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xchg},
    ptr,
};

use aya_ebpf::{EbpfContext, helpers::generated::bpf_ktime_get_boot_ns, macros::map, maps::Array};
use aya_log_ebpf::warn;
use monitor_common::KernelStats;

use crate::{
    layout::task_ids,
    maps::{add, kernel_stats},
};

/// At most one log line per kind of loss in this many nanoseconds.
const LOG_PERIOD_NS: u64 = 60_000_000_000;

/// The kinds of loss, each with its own log budget.
#[repr(u32)]
#[derive(Clone, Copy)]
enum Kind {
    Storage = 0,
    EventDrop = 1,
    Argv = 2,
    Lineage = 3,
    ProvisionalEmpty = 4,
    DiscoveryFull = 5,
    Move = 6,
    Layout = 7,
    PeerRows = 8,
}

const KINDS: u32 = 9;

/// When the next line of a kind may be logged, and how many were not.
#[repr(C)]
pub struct Throttle {
    next_ns: u64,
    skipped: u64,
}

#[map(name = "LOG_THROTTLE")]
static LOG_THROTTLE: Array<Throttle> = Array::with_max_entries(KINDS, 0);

/// Counts a loss in `field` of the health counters; returns the total so far.
#[inline(always)]
fn count(field: impl FnOnce(&mut KernelStats) -> &mut u64) -> u64 {
    let Some(stats) = kernel_stats() else {
        return 0;
    };
    let counter = field(stats);
    add(counter, 1);
    // SAFETY: an aligned u64 in a map value.
    unsafe { ptr::read_volatile(counter) }
}

/// Whether a line of `kind` may be logged now; if so, how many losses of
/// that kind were not logged since the last line. Losing the race to
/// another CPU counts as not logged.
#[inline(always)]
fn admit(kind: Kind) -> Option<u64> {
    let throttle = LOG_THROTTLE.get_ptr_mut(kind as u32)?;
    // SAFETY: array values live as long as the map; the fields are only
    // updated atomically.
    let throttle = unsafe { &mut *throttle };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: aligned u64 in a map value.
    let next = unsafe { ptr::read_volatile(&throttle.next_ns) };
    // SAFETY: as above; compare-and-swap on an aligned u64 (Linux 5.12+).
    let claimed = now >= next
        && unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                &mut throttle.next_ns,
                next,
                now + LOG_PERIOD_NS,
            )
        }
        .1;
    if !claimed {
        add(&mut throttle.skipped, 1);
        return None;
    }
    // SAFETY: as above; atomic exchange (Linux 5.12+).
    Some(unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(&mut throttle.skipped, 0) })
}

/// A thread that should have joined a task got no task-local storage
/// (the kernel is out of memory): its figures are missing.
#[inline(never)]
pub fn storage_failure<C: EbpfContext>(ctx: &C, task: u64, slot: u32) {
    let total = count(|stats| &mut stats.storage_failures);
    if let Some(skipped) = admit(Kind::Storage) {
        let (tid, tgid) = task_ids(task);
        warn!(
            ctx,
            "thread {} (process {}) could not join task slot {}: no task-local storage (out of memory?); its figures are missing ({} so far, {} not logged since the last line)",
            tid,
            tgid,
            slot,
            total,
            skipped
        );
    }
}

/// An event for the agent was dropped: its ring buffer is full.
#[inline(never)]
pub fn event_lost<C: EbpfContext>(ctx: &C, kind: u32, slot: u32) {
    let total = count(|stats| &mut stats.event_drops);
    if let Some(skipped) = admit(Kind::EventDrop) {
        warn!(
            ctx,
            "event {} of task slot {} lost: the ring buffer to the agent is full; the agent looks at every task once ({} so far, {} not logged since the last line)",
            kind,
            slot,
            total,
            skipped
        );
    }
}

/// Exec discovery could not read a new image's argv.
#[inline(never)]
pub fn argv_unreadable<C: EbpfContext>(ctx: &C, tgid: u32) {
    let total = count(|stats| &mut stats.argv_read_failures);
    if let Some(skipped) = admit(Kind::Argv) {
        warn!(
            ctx,
            "the argv of process {} could not be read: it was not searched for a task's module ({} so far, {} not logged since the last line)",
            tgid,
            total,
            skipped
        );
    }
}

/// A module exec refused: the process does not descend from the proplet.
#[inline(never)]
pub fn lineage_refused<C: EbpfContext>(ctx: &C, tgid: u32) {
    let total = count(|stats| &mut stats.lineage_refused);
    if let Some(skipped) = admit(Kind::Lineage) {
        warn!(
            ctx,
            "process {} exec'd a task's module but does not descend from the proplet: refused ({} so far, {} not logged since the last line)",
            tgid,
            total,
            skipped
        );
    }
}

/// A module exec'd before its start message with no provisional slot left.
#[inline(never)]
pub fn provisional_exhausted<C: EbpfContext>(ctx: &C, tgid: u32) {
    let total = count(|stats| &mut stats.provisional_exhausted);
    if let Some(skipped) = admit(Kind::ProvisionalEmpty) {
        warn!(
            ctx,
            "process {} exec'd the module of a task not announced yet and no provisional slot is left: it is not counted ({} so far, {} not logged since the last line)",
            tgid,
            total,
            skipped
        );
    }
}

/// The `PROVISIONAL` map refused a module's provisional root.
#[inline(never)]
pub fn discovery_map_full<C: EbpfContext>(ctx: &C, tgid: u32) {
    let total = count(|stats| &mut stats.discovery_map_full);
    if let Some(skipped) = admit(Kind::DiscoveryFull) {
        warn!(
            ctx,
            "process {} exec'd a module before its start message and the map of provisional roots is full: a second exec of it may take another slot ({} so far, {} not logged since the last line)",
            tgid,
            total,
            skipped
        );
    }
}

/// Threads of a process that moved between cgroups whose move could not
/// be recorded (counted by the caller): they stay in their old task (or
/// in none).
#[inline(never)]
pub fn moves_lost<C: EbpfContext>(ctx: &C, tgid: u32) {
    let Some(stats) = kernel_stats() else {
        return;
    };
    // SAFETY: an aligned u64 in a map value.
    let total = unsafe { ptr::read_volatile(&stats.move_failures) };
    if let Some(skipped) = admit(Kind::Move) {
        warn!(
            ctx,
            "process {} changed cgroup but some of its threads could not follow (too many pending moves): they keep their old task ({} threads so far, {} lines not logged since the last one)",
            tgid,
            total,
            skipped
        );
    }
}

/// The kernel's structs are not where the offsets read from BTF say.
#[inline(never)]
pub fn layout_mismatch<C: EbpfContext>(ctx: &C, read: (u32, u32), actual: (u32, u32)) {
    let total = count(|stats| &mut stats.layout_mismatches);
    if let Some(skipped) = admit(Kind::Layout) {
        warn!(
            ctx,
            "unexpected kernel layout: the agent's thread reads as {}/{} (tid/pid) at the offsets from BTF, the kernel says {}/{}: figures cannot be trusted ({} so far, {} not logged since the last line)",
            read.0,
            read.1,
            actual.0,
            actual.1,
            total,
            skipped
        );
    }
}

/// A task's new peer found every peer row taken: its bytes go to the
/// task's unlisted figures (its `other` peer), still in its totals.
#[inline(never)]
pub fn peer_rows_exhausted<C: EbpfContext>(ctx: &C, slot: u32) {
    let total = count(|stats| &mut stats.peer_rows_exhausted);
    if let Some(skipped) = admit(Kind::PeerRows) {
        warn!(
            ctx,
            "a new peer of task slot {} found every peer row taken: it is counted in the task's \"other\" peer ({} so far, {} not logged since the last line)",
            slot,
            total,
            skipped
        );
    }
}
