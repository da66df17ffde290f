//! propmon's kernel side: per-task accounting, decided in the kernel.
//!
//! A *task* is a slot number chosen by userspace. Threads join a task when
//! they are created (`lifecycle`), and every hook family charges what it
//! observes to the task of the thread it runs for (`cpu`, `disk`, `net`).
//! Userspace only reads the per-CPU counters and the tracked-process map.
#![no_std]
#![no_main]
// Atomic adds: the BPF target has no compare-and-swap, so core's atomics
// lack fetch_add; the intrinsic lowers to BPF's atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod cpu;
mod discovery;
mod disk;
mod layout;
mod lifecycle;
mod maps;
mod net;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: tp_btf programs and bpf_probe_read_kernel need it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
