//! propmon's kernel side: per-task accounting, decided in the kernel.
//!
//! A *task* is a slot number chosen by userspace. Threads join a task at fork
//! (`lifecycle`), and every hook family charges what it observes to the
//! task of the thread it runs for (`cpu`, ...). Userspace only reads the
//! per-CPU counters and the tracked-process map.
#![no_std]
#![no_main]

mod cpu;
mod lifecycle;
mod maps;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: tp_btf programs and bpf_probe_read_kernel need it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
