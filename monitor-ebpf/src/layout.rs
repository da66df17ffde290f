//! Reads of kernel struct fields at offsets the loader resolved from the
//! running kernel's BTF (`monitor_common::KernelLayout`): Rust eBPF has no
//! CO-RE relocations yet.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use monitor_common::{KERNEL_COUNTERS, KernelCounters, KernelLayout};

/// The offsets, as zeros here: the loader writes the running kernel's
/// over them (`EbpfLoader::override_global`) before load, and the
/// verifier then knows each as a constant (a frozen read-only map).
#[unsafe(no_mangle)]
static LAYOUT: KernelLayout = KernelLayout {
    task_pid: 0,
    task_tgid: 0,
    task_sum_exec_runtime: 0,
    task_mm: 0,
    task_signal: 0,
    task_files: 0,
    task_bpf_storage: 0,
    ioac_fields: [0; 7],
    signal_live: 0,
    signal_nr_threads: 0,
    mm_rss_stat: 0,
    percpu_counter_size: 0,
    percpu_counter_count: 0,
    rss_members: [0; 3],
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_open_fds: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    sock_family: 0,
    sock_protocol: 0,
    sock_daddr: 0,
    skb_tcp_segments: 0,
    sock_dport: 0,
    sock_v6_daddr: 0,
    sock_state: 0,
    task_flags: 0,
    task_thread_node: 0,
    signal_thread_head: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    cgroup_root: 0,
    cgroup_root_hierarchy_id: 0,
    cgroup_parent: 0,
    css_cgroup: 0,
};

/// The offsets. The compiler must not use the zeros above, so it is
/// handed the address through `black_box`; the fields are then read
/// where used, each once, rather than the whole struct at every call
/// (what `aya_ebpf::Global::load`'s volatile read of the struct does,
/// which cost the socket hooks a load per field).
#[inline(always)]
pub fn layout() -> &'static KernelLayout {
    core::hint::black_box(&LAYOUT)
}

/// Reads a field of a struct the verifier knows the BTF type of (a typed
/// tracepoint or iterator argument, or a pointer loaded from one): a plain
/// load, which the kernel makes safe (a NULL or stale pointer reads 0),
/// instead of a helper call. `offset` must come from `LAYOUT`, which the
/// verifier knows as a constant (read-only, frozen map), and land on a
/// field of that type, or the program does not load.
#[inline(always)]
pub fn field<T: Copy>(typed: u64, offset: u32) -> T {
    // SAFETY: the verifier checks the access against the pointer's BTF type.
    unsafe { core::ptr::read_volatile((typed + u64::from(offset)) as *const T) }
}

/// Reads a `T` at `base + offset` in kernel memory that the verifier has
/// no type for.
#[inline(always)]
pub fn read<T>(base: u64, offset: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address itself.
    unsafe { bpf_probe_read_kernel((base + offset) as *const T) }.ok()
}

/// `(pid, tgid)` of a typed `struct task_struct *`: thread and process id.
#[inline(always)]
pub fn task_ids(task: u64) -> (u32, u32) {
    let layout = layout();
    (
        field::<i32>(task, layout.task_pid) as u32,
        field::<i32>(task, layout.task_tgid) as u32,
    )
}

/// The kernel's own counters of a typed `struct task_struct *`, as
/// `/proc/<tid>/schedstat` and `/proc/<tid>/io` print them.
#[inline(always)]
pub fn kernel_counters(task: u64) -> [u64; KERNEL_COUNTERS] {
    counters_of(task).as_array()
}

/// [`kernel_counters`] as the struct.
#[inline(always)]
pub fn counters_of(task: u64) -> KernelCounters {
    let layout = layout();
    let ioac = |index: usize| field::<u64>(task, layout.ioac_fields[index]);
    KernelCounters {
        cpu_ns: field::<u64>(task, layout.task_sum_exec_runtime),
        rchar: ioac(0),
        wchar: ioac(1),
        syscr: ioac(2),
        syscw: ioac(3),
        read_bytes: ioac(4),
        write_bytes: ioac(5),
        cancelled_write_bytes: ioac(6),
    }
}

/// The same counters of a `struct task_struct` the verifier has no type
/// for (found by walking a list): read with `bpf_probe_read_kernel`.
#[inline(always)]
pub fn counters_at(task: u64) -> Option<KernelCounters> {
    let layout = layout();
    let ioac = |index: usize| read::<u64>(task, u64::from(layout.ioac_fields[index]));
    Some(KernelCounters {
        cpu_ns: read::<u64>(task, u64::from(layout.task_sum_exec_runtime))?,
        rchar: ioac(0)?,
        wchar: ioac(1)?,
        syscr: ioac(2)?,
        syscw: ioac(3)?,
        read_bytes: ioac(4)?,
        write_bytes: ioac(5)?,
        cancelled_write_bytes: ioac(6)?,
    })
}
