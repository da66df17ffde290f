//! Charging a thread's consumption to its task, exactly once.
//!
//! The kernel already counts CPU and I/O per thread (`se.sum_exec_runtime`,
//! `ioac`), and our socket hooks count payload in the thread's own
//! storage. What a task has consumed is the growth of those counters over
//! the time its threads were members. Each thread remembers how much of
//! each counter was charged; charging moves that mark up to the current
//! value with compare-and-swap and adds the difference to the task's
//! record. The sampling pass charges live threads, `sched_process_free`
//! charges a thread's last part, and a thread whose process leaves for
//! another task's cgroup is charged up to the move (`moves`); when two of
//! them look at the same thread at once, each charges a disjoint share, so
//! nothing is counted twice and the record never goes back.

use core::ptr;

use monitor_common::{
    KERNEL_COUNTERS, KernelCounters, NetCounters, TaskRecord, ThreadState, collect, thread,
};

use crate::{
    layout::kernel_counters,
    maps::{add, advance},
};

/// Charges `thread` (the storage of `task`) to `record`, for the figures
/// of `flags` (the task's `collect` flags).
#[inline(always)]
pub fn charge(task: u64, thread: &mut ThreadState, flags: u32, record: &mut TaskRecord) {
    charge_until(&kernel_counters(task), thread, flags, record);
}

/// [`charge`] up to `now`, the thread's kernel counters at some moment
/// (the move of its process to another cgroup): what follows is not this
/// task's.
#[inline(always)]
pub fn charge_until(
    now: &[u64; KERNEL_COUNTERS],
    thread: &mut ThreadState,
    flags: u32,
    record: &mut TaskRecord,
) {
    // Attached threads: what they did before the attach is not the task's.
    let baseline = thread.flags & thread::BASELINE_PENDING != 0;
    if flags & (collect::CPU | collect::DISK) != 0 {
        let charged = counters_mut(&mut thread.charged);
        let totals = counters_mut(&mut record.counters);
        for (index, value) in now.iter().enumerate() {
            // Index 0 is CPU time, the others `/proc/<pid>/io` figures.
            let wanted = if index == 0 {
                collect::CPU
            } else {
                collect::DISK
            };
            if flags & wanted == 0 {
                continue;
            }
            let delta = advance(&mut charged[index], *value);
            if delta > 0 && !baseline {
                add(&mut totals[index], delta);
            }
        }
    }
    if baseline {
        thread.flags &= !thread::BASELINE_PENDING;
    }
    if flags & collect::NETWORK != 0 {
        charge_net(&thread.net, &mut thread.net_charged, &mut record.net);
    }
}

/// Charges the socket payload counted in the thread's storage.
#[inline(always)]
fn charge_net(counted: &NetCounters, charged: &mut NetCounters, totals: &mut NetCounters) {
    let pairs = [
        (
            &counted.tx_bytes,
            &mut charged.tx_bytes,
            &mut totals.tx_bytes,
        ),
        (
            &counted.rx_bytes,
            &mut charged.rx_bytes,
            &mut totals.rx_bytes,
        ),
    ];
    for (counted, charged, totals) in pairs {
        for bucket in 0..counted.len() {
            // SAFETY: aligned u64 written by the thread itself; a plain
            // load sees the old or the new value.
            let now = unsafe { ptr::read_volatile(&counted[bucket]) };
            let delta = advance(&mut charged[bucket], now);
            if delta > 0 {
                add(&mut totals[bucket], delta);
            }
        }
    }
}

/// The counters as an array, in field order.
#[inline(always)]
fn counters_mut(counters: &mut KernelCounters) -> &mut [u64; KERNEL_COUNTERS] {
    // SAFETY: KernelCounters is `#[repr(C)]` with KERNEL_COUNTERS u64
    // fields and nothing else: the same layout as the array.
    unsafe { &mut *ptr::from_mut(counters).cast::<[u64; KERNEL_COUNTERS]>() }
}

/// Charges what a thread without storage consumed between two readings of
/// its counters (a thread that joined a task by a move and was released
/// before anyone gave it storage).
#[inline(always)]
pub fn charge_between(
    then: &[u64; KERNEL_COUNTERS],
    now: &[u64; KERNEL_COUNTERS],
    flags: u32,
    record: &mut TaskRecord,
) {
    let totals = counters_mut(&mut record.counters);
    for index in 0..KERNEL_COUNTERS {
        let wanted = if index == 0 {
            collect::CPU
        } else {
            collect::DISK
        };
        let delta = now[index].saturating_sub(then[index]);
        if flags & wanted != 0 && delta > 0 {
            add(&mut totals[index], delta);
        }
    }
}

/// Marks everything `task` has consumed so far as not the task's: a thread
/// joining a task that existed before (attach, exec discovery) starts
/// from here.
#[inline(always)]
pub fn start_from_now(task: u64, thread: &mut ThreadState) {
    *counters_mut(&mut thread.charged) = kernel_counters(task);
    thread.net_charged = thread.net;
}
