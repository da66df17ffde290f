//! Reads of `struct task_struct` fields.
//!
//! Rust eBPF has no CO-RE relocations yet, so the loader resolves the field
//! offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`) and sets
//! these read-only globals before load (see monitor-user `collect::ebpf::btf`).

use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};

#[unsafe(no_mangle)]
static TASK_PID_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: Global<u32> = Global::new(0);

/// `(pid, tgid)` of a task: its thread id and its process id.
#[inline(always)]
pub fn pid_tgid(task: u64) -> Option<(u32, u32)> {
    let pid = read_i32(task, TASK_PID_OFFSET.load())?;
    let tgid = read_i32(task, TASK_TGID_OFFSET.load())?;
    Some((pid as u32, tgid as u32))
}

#[inline(always)]
fn read_i32(base: u64, offset: u32) -> Option<i32> {
    let field = (base + offset as u64) as *const i32;
    // SAFETY: bpf_probe_read_kernel validates the address itself.
    unsafe { bpf_probe_read_kernel(field) }.ok()
}
