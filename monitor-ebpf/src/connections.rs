//! TCP connections per peer: opened, closed, failed, retransmitted,
//! reset, for the task whose socket it is.
//!
//! Hooks (tp_btf), on TCP state changes and retransmissions only, never
//! per packet sent or received:
//! - `inet_sock_set_state` (Linux 4.16+): `SYN_SENT` is set in `connect()`,
//!   in the connecting thread's context: a member's socket gets its peer
//!   row there. Later changes often run in softirq context, where
//!   `current` is whoever was interrupted: they find the task through the
//!   socket's storage, never through `current`. Established counts as
//!   opened; closing after that, as closed; closing before, as a failed
//!   connection (refused, timed out, reset). Sockets accepted before any
//!   member touched them count as opened at their first use (`peers`).
//! - `tcp_retransmit_skb`, `tcp_receive_reset` (softirq or timers): the
//!   socket's row counts the retransmitted segments or the reset.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use monitor_common::{PeerCounters, SocketState};

use crate::{
    layout::{field, layout, read},
    maps::{SOCKETS, add, current_task, member, task_config},
    peers::{IPPROTO_TCP, TCP_ESTABLISHED, counters_of, socket_row},
};

/// `TCP_SYN_SENT`, `TCP_CLOSE` (include/net/tcp_states.h).
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let sock = ctx.arg::<u64>(0);
    if field::<u16>(sock, layout().sock_protocol) != IPPROTO_TCP {
        return 0;
    }
    let (old, new) = (ctx.arg::<i32>(1), ctx.arg::<i32>(2));
    if new == TCP_SYN_SENT {
        // connect(): process context, the connecting thread.
        if let Some((thread, _)) = member(current_task()) {
            socket_row(&ctx, sock, thread.slot, thread.generation, true);
        }
        return 0;
    }
    let Some((state, counters)) = socket_counters(sock) else {
        return 0;
    };
    if new == i32::from(TCP_ESTABLISHED) && state.flags & SocketState::ESTABLISHED == 0 {
        state.flags |= SocketState::ESTABLISHED;
        add(&mut counters.connections_opened, 1);
    } else if new == TCP_CLOSE {
        if state.flags & SocketState::ESTABLISHED != 0 {
            add(&mut counters.connections_closed, 1);
        } else if old == TCP_SYN_SENT {
            add(&mut counters.failed_connections, 1);
        }
    }
    0
}

/// `(sk, skb, ...)`: one event per retransmitted skb, which carries
/// `tcp_skb_pcount` segments, as `tcpi_total_retrans` counts them.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> u32 {
    if let Some((_, counters)) = socket_counters(ctx.arg::<u64>(0)) {
        // `cb` is a char array: a helper read, not a typed load. Off the
        // hot path (retransmissions only).
        let segments = read::<u16>(ctx.arg::<u64>(1), u64::from(layout().skb_tcp_segments))
            .unwrap_or(1)
            .max(1);
        add(&mut counters.retransmits, u64::from(segments));
    }
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> u32 {
    if let Some((state, counters)) = socket_counters(ctx.arg::<u64>(0))
        && state.flags & SocketState::ESTABLISHED != 0
    {
        add(&mut counters.resets_received, 1);
    }
    0
}

/// The storage of a task's socket and the counters of its peer, if the
/// socket belongs to a live task.
#[inline(always)]
fn socket_counters(sock: u64) -> Option<(&'static mut SocketState, &'static mut PeerCounters)> {
    let state = SOCKETS.get(sock, None)?;
    let config = task_config(state.slot)?;
    if config.generation != state.generation || config.flags == 0 {
        return None;
    }
    let counters = counters_of(state.row, state.slot, state.generation, state.slot)?;
    Some((state, counters))
}
