//! Telling userspace what it must react to without polling every task
//! (`monitor_common::TaskEvent`), through the `TASK_EVENTS` ring buffer.

use aya_ebpf::EbpfContext;
use monitor_common::{DISCOVERY_ID_BYTES, TaskEvent};

use crate::{diag, maps::TASK_EVENTS};

/// bpf_ringbuf_output flag (include/uapi/linux/bpf.h): wake the reader
/// only when it has caught up, so a burst costs one wake-up.
const BPF_RB_ADAPTIVE_WAKEUP: u64 = 0;

/// Tells userspace about a task event; a full ring is counted and logged.
#[inline(always)]
pub fn emit<C: EbpfContext>(ctx: &C, event: &TaskEvent) {
    if TASK_EVENTS
        .output::<TaskEvent>(event, BPF_RB_ADAPTIVE_WAKEUP)
        .is_err()
    {
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
