//! Reads of kernel struct fields at offsets the loader resolved from the
//! running kernel's BTF (`monitor_common::KernelLayout`): Rust eBPF has no
//! CO-RE relocations yet.

use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};
use monitor_common::KernelLayout;

#[unsafe(no_mangle)]
static LAYOUT: Global<KernelLayout> = Global::new(KernelLayout {
    task_pid: 0,
    task_tgid: 0,
    task_bio_list: 0,
    task_cancelled_write_bytes: 0,
    task_start_boottime: 0,
    task_mm: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    ns_per_clock_tick: 0,
    sock_family: 0,
    sock_protocol: 0,
    bio_opf: 0,
    bio_size: 0,
    folio_flags: 0,
    folio_nr_pages: 0,
    pg_head_bit: 0,
    req_meta_bit: 0,
    req_idle_bit: 0,
    page_size: 0,
});

#[inline(always)]
pub fn layout() -> KernelLayout {
    LAYOUT.load()
}

/// Reads a field of a struct that a BTF tracepoint passed as an argument
/// (a pointer the verifier knows the type of): a plain load, which the
/// kernel makes safe, instead of a helper call. `offset` must come from
/// `LAYOUT`, which the verifier knows as a constant (read-only, frozen map),
/// and land on a field of that type, or the program does not load.
#[inline(always)]
pub fn field<T: Copy>(typed_arg: u64, offset: u32) -> T {
    // SAFETY: the verifier checks the access against the argument's BTF type.
    unsafe { core::ptr::read_volatile((typed_arg + u64::from(offset)) as *const T) }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address itself.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// `(pid, tgid)` of a task: its thread id and its process id.
#[inline(always)]
pub fn task_pid_tgid(task: u64) -> Option<(u32, u32)> {
    let layout = layout();
    let pid = read::<i32>(task, layout.task_pid)?;
    let tgid = read::<i32>(task, layout.task_tgid)?;
    Some((pid as u32, tgid as u32))
}
