//! propmon's kernel side: per-task accounting, decided in the kernel.
//!
//! A *task* is a slot number (and generation) chosen by userspace. Threads
//! join a task when they are created (`membership`), when they exec a
//! task's module (`discovery`) or when their process moves into a cgroup
//! that defines a task (`cgroup`, `moves`), and their task is kept in their
//! task-local storage. The kernel already counts CPU and disk per thread; the
//! sampling pass (`pass`) and the thread's release charge those counters
//! to its task (`charge`). Only what nothing else counts has a per-event
//! hook: socket payload (`net`). Userspace reads the memory-mapped records;
//! losses are counted and logged (`diag`).
#![no_std]
#![no_main]
// Atomic add and compare-and-swap: the BPF target declares no CAS, so
// core's atomic types lack them; the intrinsics lower to BPF's atomic
// instructions (compare-and-swap since Linux 5.12).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod cgroup;
mod charge;
mod connections;
mod diag;
mod discovery;
mod events;
mod layout;
mod maps;
mod membership;
mod moves;
mod net;
mod pass;
mod peers;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: tp_btf programs and bpf_probe_read_kernel need it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
