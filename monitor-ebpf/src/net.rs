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
//! AF_INET/AF_INET6 bytes go to the row of the socket's peer (`peers`):
//! a thread remembers its last socket and that socket's row, so a stream
//! costs one task-local storage lookup, a check that the socket still has
//! that peer, and one atomic add per call; a switch to another socket adds
//! a socket-local storage lookup. AF_UNIX
//! bytes go to the thread's own storage (plain adds, charged by the pass).
//! A thread outside every task costs one task-local storage lookup.

use aya_ebpf::{
    macros::{btf_tracepoint, fexit},
    programs::{BtfTracePointContext, FExitContext},
};
use monitor_common::{NetBucket, NetCounters, ThreadState, collect};

use crate::{
    layout::{field, layout},
    maps::{THREADS, add, current_task, task_record, valid_membership},
    peers::{
        AF_INET, AF_INET6, AF_UNIX, bucket_of, counters_of, owned_row, peer_row_of, socket_row,
    },
};

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
    let task = current_task();
    let Some(thread) = THREADS.get(task) else {
        return;
    };
    if thread.flags & collect::NETWORK == 0 {
        return;
    }
    let sock = ctx.arg::<u64>(0);
    match field::<u16>(sock, layout().sock_family) {
        AF_UNIX => add_unix(&mut thread.net, direction, ret as u64),
        AF_INET | AF_INET6 => count_inet(ctx, task, thread, sock, direction, ret as u64),
        _ => {}
    }
}

/// Bytes through an AF_INET/AF_INET6 socket, to its peer's row.
#[inline(always)]
fn count_inet(
    ctx: &BtfTracePointContext,
    task: u64,
    thread: &'static mut ThreadState,
    sock: u64,
    direction: Direction,
    bytes: u64,
) {
    let (slot, generation) = (thread.slot, thread.generation);
    let cached = if thread.last_socket == sock {
        peer_row_of(thread.last_row, sock, slot, generation)
    } else {
        None
    };
    let row = match cached {
        Some(row) => Some(row),
        None => {
            // A new socket: only a member of a live task may take a row.
            let Some((thread, _)) = valid_membership(task, thread) else {
                return;
            };
            let row = socket_row(ctx, sock, slot, generation, true);
            thread.last_socket = sock;
            thread.last_row = row;
            owned_row(row, slot, generation)
        }
    };
    let (counters, bucket) = match row {
        Some(row) => (&mut row.counters, bucket_of(row.key.protocol)),
        None => {
            // No row to be had: the task's unlisted figures.
            let Some(record) = task_record(slot) else {
                return;
            };
            let protocol = field::<u16>(sock, layout().sock_protocol);
            (&mut record.unlisted, bucket_of(protocol))
        }
    };
    let totals = match direction {
        Direction::Sent => &mut counters.net.tx_bytes,
        Direction::Received => &mut counters.net.rx_bytes,
    };
    if let Some(total) = totals.get_mut(bucket as usize) {
        add(total, bytes);
    }
}

/// AF_UNIX bytes, in the thread's own storage: only the thread writes them
/// and a program does not nest into itself on a CPU, so no atomic is needed.
#[inline(always)]
fn add_unix(counters: &mut NetCounters, direction: Direction, bytes: u64) {
    let totals = match direction {
        Direction::Sent => &mut counters.tx_bytes,
        Direction::Received => &mut counters.rx_bytes,
    };
    totals[NetBucket::Unix as usize] += bytes;
}

/// Both splice_read functions take 5 arguments; the 6th slot is the return
/// value (ssize_t bytes, or -errno). The socket is a `struct socket`, not
/// the `struct sock` whose row we keep: TCP bytes spliced out go to the
/// task's unlisted figures (counted in the totals, with no peer).
#[inline(always)]
fn count_splice(ctx: &FExitContext, bucket: NetBucket) {
    let ret = ctx.arg::<i64>(5);
    if ret <= 0 {
        return;
    }
    let task = current_task();
    let Some(thread) = THREADS.get(task) else {
        return;
    };
    if thread.flags & collect::NETWORK == 0 {
        return;
    }
    if bucket == NetBucket::Unix {
        add_unix(&mut thread.net, Direction::Received, ret as u64);
        return;
    }
    let Some((thread, _)) = valid_membership(task, thread) else {
        return;
    };
    let slot = thread.slot;
    if let Some(counters) = counters_of(monitor_common::NO_ROW, slot, 0, slot) {
        add(&mut counters.net.rx_bytes[bucket as usize], ret as u64);
    }
}
