//! Network payload bytes per task, per protocol.
//!
//! Hooks, all in process context (the task moving the data):
//! - `tp_btf/sock_send_length`, `tp_btf/sock_recv_length` (Linux 6.3+):
//!   fired by `sock_sendmsg`/`sock_recvmsg` with the byte count or -errno,
//!   for read/write, send*/recv*, sendmmsg/recvmmsg, sendfile and splice to
//!   a socket, and io_uring. `MSG_PEEK` receives move nothing and count nothing.
//! - `fexit/tcp_splice_read`, `fexit/unix_stream_splice_read`: splicing out
//!   of a TCP or AF_UNIX stream socket reads through `read_sock`, which
//!   bypasses `sock_recvmsg`. Optional: kernels under lockdown refuse
//!   fentry/fexit programs, and the loader then says what is not counted.
//!
//! Payload only: no headers, no retransmissions, no in-kernel consumers.
//!
//! The bytes go to the thread's own storage, which only the thread itself
//! writes (plain adds, no atomics, no lookup of the task's record); the
//! sampling pass charges them to the task. A thread outside every task
//! costs one task-local storage lookup.

use aya_ebpf::{
    macros::{btf_tracepoint, fexit},
    programs::{BtfTracePointContext, FExitContext},
};
use monitor_common::{NetBucket, NetCounters, collect};

use crate::{
    layout::{field, layout},
    maps::{THREADS, current_task},
};

/// Address families and protocols (include/linux/socket.h, uapi/linux/in.h).
const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
const IPPROTO_UDPLITE: u16 = 136;
/// recvmsg flag (include/linux/socket.h).
const MSG_PEEK: u32 = 2;

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    count(&ctx, Direction::Sent);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    if ctx.arg::<u32>(2) & MSG_PEEK == 0 {
        count(&ctx, Direction::Received);
    }
    0
}

#[fexit(function = "tcp_splice_read")]
pub fn tcp_splice_read(ctx: FExitContext) -> u32 {
    count_splice(&ctx, NetBucket::Tcp);
    0
}

#[fexit(function = "unix_stream_splice_read")]
pub fn unix_stream_splice_read(ctx: FExitContext) -> u32 {
    count_splice(&ctx, NetBucket::Unix);
    0
}

#[derive(Clone, Copy)]
enum Direction {
    Sent,
    Received,
}

/// `(struct sock *sk, int ret, int flags)`: `ret` is bytes or -errno.
#[inline(always)]
fn count(ctx: &BtfTracePointContext, direction: Direction) {
    let ret = ctx.arg::<i32>(1);
    if ret <= 0 {
        return;
    }
    let Some(counters) = current_net_counters() else {
        return;
    };
    if let Some(bucket) = bucket_of(ctx.arg::<u64>(0)) {
        add_bytes(counters, bucket, direction, ret as u64);
    }
}

/// The socket counters of the current thread, if its task collects them.
#[inline(always)]
fn current_net_counters() -> Option<&'static mut NetCounters> {
    let thread = THREADS.get(current_task())?;
    if thread.flags & collect::NETWORK == 0 {
        return None;
    }
    Some(&mut thread.net)
}

/// Both splice_read functions take 5 arguments; the 6th slot is the return
/// value (ssize_t bytes, or -errno).
#[inline(always)]
fn count_splice(ctx: &FExitContext, bucket: NetBucket) {
    let ret = ctx.arg::<i64>(5);
    if ret <= 0 {
        return;
    }
    if let Some(counters) = current_net_counters() {
        add_bytes(counters, bucket, Direction::Received, ret as u64);
    }
}

#[inline(always)]
fn add_bytes(counters: &mut NetCounters, bucket: NetBucket, direction: Direction, bytes: u64) {
    let totals = match direction {
        Direction::Sent => &mut counters.tx_bytes,
        Direction::Received => &mut counters.rx_bytes,
    };
    if let Some(total) = totals.get_mut(bucket as usize) {
        // Only this thread writes its counters, and a program does not
        // nest into itself on a CPU: no atomic needed.
        *total += bytes;
    }
}

/// The bucket of a socket (the tracepoint's typed `struct sock *`); `None`
/// for families we do not report (netlink, packet, vsock...).
#[inline(always)]
fn bucket_of(sock: u64) -> Option<NetBucket> {
    let layout = layout();
    match field::<u16>(sock, layout.sock_family) {
        AF_UNIX => Some(NetBucket::Unix),
        AF_INET | AF_INET6 => Some(match field::<u16>(sock, layout.sock_protocol) {
            IPPROTO_TCP => NetBucket::Tcp,
            IPPROTO_UDP | IPPROTO_UDPLITE => NetBucket::Udp,
            _ => NetBucket::Other,
        }),
        _ => None,
    }
}
