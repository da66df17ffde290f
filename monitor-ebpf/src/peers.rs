//! Peer rows: each remote endpoint (address, port, protocol) of a task has
//! a row in `PEERS` where what goes through it is counted, and each socket
//! a task uses remembers its row in its socket-local storage, so that only
//! a socket's first use (and a thread's switch to another socket) looks a
//! peer up. A remembered row is used only while the socket still talks to
//! that row's peer: a freed socket's memory is reused by the next one, and
//! a UDP socket may connect elsewhere. Rows are bounded: a peer that gets none is counted in its
//! task's `unlisted` figures, so that a task's peers always add up to its
//! totals.

use aya_ebpf::EbpfContext;
use monitor_common::{NO_ROW, NetBucket, PeerCounters, PeerKey, PeerRow, SocketState, TaskRecord};

use crate::{
    diag,
    layout::{field, layout},
    maps::{
        FREE_PEER_ROWS, PEER_INDEX, PEERS, SOCKETS, add, control, fetch_increment, task_record,
    },
};

/// Address families and protocols (include/linux/socket.h, uapi/linux/in.h).
pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
const IPPROTO_UDPLITE: u16 = 136;
/// `TCP_ESTABLISHED`, `TCP_CLOSE_WAIT` (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;
/// bpf_map_update_elem flag (include/uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

/// The bucket of a protocol.
#[inline(always)]
pub fn bucket_of(protocol: u16) -> NetBucket {
    match protocol {
        IPPROTO_TCP => NetBucket::Tcp,
        IPPROTO_UDP | IPPROTO_UDPLITE => NetBucket::Udp,
        _ => NetBucket::Other,
    }
}

/// The row `row` if it is the task's and `sock` still talks to its peer.
#[inline(always)]
pub fn peer_row_of(
    row: u32,
    sock: u64,
    slot: u32,
    generation: u32,
) -> Option<&'static mut PeerRow> {
    let row = owned_row(row, slot, generation)?;
    (row.key == peer_key(sock, slot, generation)).then_some(row)
}

/// The row `row` if it is the task's (slot, generation).
#[inline(always)]
pub fn owned_row(row: u32, slot: u32, generation: u32) -> Option<&'static mut PeerRow> {
    // SAFETY: array values live as long as the map; counters are only
    // changed with atomic adds, the key only by the row's taker.
    let row = PEERS.get_ptr_mut(row).map(|p| unsafe { &mut *p })?;
    (row.key.slot == slot && row.key.generation == generation).then_some(row)
}

/// The peer row of a task's socket (a BTF `struct sock *`), given the
/// socket its storage (`create`) or taking a row if needed; [`NO_ROW`] if
/// none can be had.
#[inline(always)]
pub fn socket_row<C: EbpfContext>(
    ctx: &C,
    sock: u64,
    slot: u32,
    generation: u32,
    create: bool,
) -> u32 {
    let mut initial = SocketState {
        slot,
        generation,
        row: NO_ROW,
        flags: 0,
    };
    let state = SOCKETS.get(sock, create.then_some(&mut initial));
    if let Some(state) = &state
        && state.slot == slot
        && state.generation == generation
        && peer_row_of(state.row, sock, slot, generation).is_some()
    {
        return state.row;
    }
    let row = peer_row(ctx, &peer_key(sock, slot, generation));
    if let Some(state) = state {
        let fresh = state.row == NO_ROW && state.flags == 0;
        *state = SocketState {
            slot,
            generation,
            row,
            flags: 0,
        };
        if fresh {
            count_established_at_first_use(sock, state, slot);
        }
    }
    row
}

/// A socket accepted before any thread of the task touched it was
/// established in softirq context: it counts as opened at its first use.
#[inline(always)]
fn count_established_at_first_use(sock: u64, state: &mut SocketState, slot: u32) {
    if field::<u16>(sock, layout().sock_protocol) != IPPROTO_TCP {
        return;
    }
    let tcp_state = field::<u8>(sock, layout().sock_state);
    if tcp_state != TCP_ESTABLISHED && tcp_state != TCP_CLOSE_WAIT {
        return;
    }
    state.flags |= SocketState::ESTABLISHED;
    if let Some(counters) = counters_of(state.row, state.slot, state.generation, slot) {
        add(&mut counters.connections_opened, 1);
    }
}

/// The counters of `row`, or of the task's unlisted figures.
#[inline(always)]
pub fn counters_of(
    row: u32,
    slot: u32,
    generation: u32,
    task: u32,
) -> Option<&'static mut PeerCounters> {
    if let Some(row) = owned_row(row, slot, generation) {
        return Some(&mut row.counters);
    }
    task_record(task).map(|record: &mut TaskRecord| &mut record.unlisted)
}

/// Who a socket talks to; one key per task for sockets without a single
/// peer (unconnected UDP).
#[inline(always)]
fn peer_key(sock: u64, slot: u32, generation: u32) -> PeerKey {
    let mut key = PeerKey {
        slot,
        generation,
        protocol: field::<u16>(sock, layout().sock_protocol),
        ..PeerKey::default()
    };
    let family = field::<u16>(sock, layout().sock_family);
    let port = field::<u16>(sock, layout().sock_dport);
    let connected = match family {
        AF_INET => {
            let addr = field::<u32>(sock, layout().sock_daddr);
            key.addr[..4].copy_from_slice(&addr.to_ne_bytes());
            addr != 0
        }
        AF_INET6 => {
            // `in6_addr` is a union of arrays: read it word by word, which
            // the verifier checks against the socket's BTF type.
            let mut any = 0;
            for (index, chunk) in key.addr.chunks_exact_mut(4).enumerate() {
                let word = field::<u32>(sock, layout().sock_v6_daddr + 4 * index as u32);
                chunk.copy_from_slice(&word.to_ne_bytes());
                any |= word;
            }
            any != 0
        }
        _ => false,
    };
    if connected && port != 0 {
        key.family = family;
        key.port = port;
    } else {
        key.addr = [0; 16];
    }
    key
}

/// The row of `key`, taking one if it has none.
#[inline(always)]
fn peer_row<C: EbpfContext>(ctx: &C, key: &PeerKey) -> u32 {
    // SAFETY: plain value copied out at once.
    if let Some(row) = unsafe { PEER_INDEX.get(key) }.copied() {
        return row;
    }
    let Some(row) = take_row() else {
        diag::peer_rows_exhausted(ctx, key.slot);
        return NO_ROW;
    };
    let Some(taken) = PEERS.get_ptr_mut(row) else {
        return NO_ROW;
    };
    // SAFETY: the row is ours alone until published in PEER_INDEX.
    unsafe { (*taken).key = *key };
    if PEER_INDEX.insert(key, row, BPF_NOEXIST).is_ok() {
        return row;
    }
    // Another CPU published this peer first: use its row, give ours back
    // (marked as nobody's, as userspace marks the rows it gives back).
    // SAFETY: as above.
    unsafe {
        (*taken).key = PeerKey {
            slot: u32::MAX,
            ..PeerKey::default()
        }
    };
    let _ = FREE_PEER_ROWS.push(row, 0);
    // SAFETY: as above.
    unsafe { PEER_INDEX.get(key) }.copied().unwrap_or(NO_ROW)
}

/// A free row: one userspace gave back, else a never-used one.
#[inline(always)]
fn take_row() -> Option<u32> {
    if let Ok(Some(row)) = FREE_PEER_ROWS.pop() {
        return Some(row);
    }
    let used = &mut control()?.peer_rows_used;
    // SAFETY: an aligned u64 of a map value.
    if unsafe { core::ptr::read_volatile(used) } >= u64::from(monitor_common::MAX_PEER_ROWS) {
        return None;
    }
    let next = fetch_increment(used)?;
    (next < u64::from(monitor_common::MAX_PEER_ROWS)).then_some(next as u32)
}
