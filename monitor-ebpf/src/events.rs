//! Telling userspace what it must react to without polling every task
//! (`monitor_common::TaskEvent`), through the `TASK_EVENTS` ring buffer.

use aya_ebpf::EbpfContext;
use monitor_common::{DISCOVERY_ID_BYTES, TaskEvent};

use crate::{diag, maps::TASK_EVENTS};

/// bpf_ringbuf_output flags (include/uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Tells userspace about a task event; a full ring is counted and logged.
/// A wake-up costs microseconds in the program's context (the reader is
/// woken from an IPI), so only events userspace must act on at once
/// (`urgent`) wake it; the others wait for its next round.
#[inline(always)]
pub fn emit<C: EbpfContext>(ctx: &C, event: &TaskEvent, urgent: bool) {
    let flags = if urgent {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if TASK_EVENTS.output::<TaskEvent>(event, flags).is_err() {
        diag::event_lost(ctx, event.kind, event.slot);
    }
}

/// An event about a slot and a process, without a task id.
#[inline(always)]
pub fn event(kind: u32, slot: u32, generation: u32, tgid: u32) -> TaskEvent {
    TaskEvent {
        kind,
        slot,
        generation,
        tgid,
        task_id: [0; DISCOVERY_ID_BYTES],
    }
}
