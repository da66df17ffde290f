//! Which `PEERS` rows are whose, on the userspace side.
//!
//! The kernel takes rows by itself (a new peer of a task), from the queue
//! of rows we gave back or from the never-used ones; we find new rows
//! without scanning the whole array every round: the never-used ones by
//! the kernel's count of them, the given-back ones by looking at just
//! those. When a task ends, its rows come back: their index entries are
//! deleted, they are zeroed and queued for the kernel again. A row whose
//! task is gone (taken in the instant its task ended) is taken back the
//! same way.

use std::{
    collections::{BTreeSet, HashMap as StdHashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd as _, OwnedFd},
};

use anyhow::Context as _;

use aya::maps::{HashMap, MapData, Queue};
use monitor_common::{
    MAX_PEER_ROWS, NET_BUCKETS, NetBucket, PeerCounters, PeerKey, PeerRow, TaskConfig, slot,
};

use super::sys::MappedArray;
use crate::collect::{NetTotals, PeerId, PeerTotals, TcpHealth};

/// AF_INET, AF_INET6 (include/linux/socket.h); IPPROTO_TCP.
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// Rows mapped at first: a page or so.
const MIN_MAPPED_ROWS: u32 = 32;

/// The key of a row that is nobody's.
const FREE_KEY: PeerKey = PeerKey {
    slot: u32::MAX,
    generation: 0,
    family: 0,
    protocol: 0,
    port: 0,
    _padding: 0,
    addr: [0; 16],
};

pub struct PeerBook {
    /// The rows the kernel has taken so far, and some room: the array
    /// fills from its start, and what is mapped counts in the agent's
    /// RSS (2.2 MB for all 16,384 rows).
    rows: MappedArray<PeerRow>,
    /// The PEERS array, to map more of it as rows are taken.
    array: OwnedFd,
    index: HashMap<MapData, PeerKey, u32>,
    free: Queue<MapData, u32>,
    /// Rows of each slot.
    by_slot: StdHashMap<u32, Vec<u32>>,
    /// Never-used rows below this have been looked at.
    seen_fresh: u64,
    /// Rows we queued for the kernel and have not seen taken yet.
    queued: BTreeSet<u32>,
}

impl PeerBook {
    pub fn new(
        array: OwnedFd,
        index: HashMap<MapData, PeerKey, u32>,
        free: Queue<MapData, u32>,
    ) -> anyhow::Result<Self> {
        let rows = MappedArray::map(array.as_fd(), MIN_MAPPED_ROWS).context("mapping PEERS")?;
        Ok(PeerBook {
            rows,
            array,
            index,
            free,
            by_slot: StdHashMap::new(),
            seen_fresh: 0,
            queued: BTreeSet::new(),
        })
    }

    /// Takes note of the rows the kernel took since the last call; rows of
    /// tasks that are gone are taken back.
    pub fn refresh(&mut self, used: u64, config: impl Fn(u32) -> TaskConfig) {
        let used = self.map_rows(used.min(u64::from(MAX_PEER_ROWS)) as u32);
        let fresh = (self.seen_fresh as u32)..(used as u32);
        let requeued: Vec<u32> = self
            .queued
            .iter()
            .copied()
            .filter(|&row| self.rows.get(row).key != FREE_KEY)
            .collect();
        for row in fresh.chain(requeued) {
            let key = self.rows.get(row).key;
            if key == FREE_KEY {
                self.queued.insert(row); // given back, waiting in the queue
                continue;
            }
            self.queued.remove(&row);
            let live = key.slot < monitor_common::MAX_TASKS && {
                let now = config(key.slot);
                now.generation == key.generation && now.flags & slot::IN_USE != 0
            };
            if live {
                self.by_slot.entry(key.slot).or_default().push(row);
            } else {
                self.give_back(row);
            }
        }
        self.seen_fresh = used;
    }

    /// Maps at least the first `used` rows if it can (doubling), and
    /// returns how many of them are mapped: rows past those are looked
    /// at in a later round.
    fn map_rows(&mut self, used: u32) -> u64 {
        if used > self.rows.entries() {
            let wanted = used
                .next_power_of_two()
                .clamp(MIN_MAPPED_ROWS, MAX_PEER_ROWS);
            if let Err(err) = self.rows.remap(self.array.as_fd(), wanted) {
                tracing::warn!(
                    "mapping {wanted} peer rows: {err}; new peers wait for a later round"
                );
            }
        }
        u64::from(used.min(self.rows.entries()))
    }

    /// Rows some task holds, as of the last refresh: every row the kernel
    /// ever took fresh, but those given back and not taken again.
    pub fn rows_in_use(&self) -> u64 {
        let taken = self.seen_fresh.min(u64::from(MAX_PEER_ROWS));
        taken.saturating_sub(self.queued.len() as u64)
    }

    /// Takes back every row of `slot` (its task ended).
    pub fn release(&mut self, slot: u32) {
        for row in self.by_slot.remove(&slot).unwrap_or_default() {
            self.give_back(row);
        }
    }

    /// Forgets that rows were ever looked at (the kernel state was taken
    /// over from another agent): the next refresh looks at every row.
    pub fn rescan(&mut self) {
        self.seen_fresh = 0;
        self.by_slot.clear();
    }

    fn give_back(&mut self, row: u32) {
        let key = self.rows.get(row).key;
        if key != FREE_KEY {
            let _ = self.index.remove(&key);
        }
        self.rows.set(
            row,
            &PeerRow {
                key: FREE_KEY,
                counters: PeerCounters::default(),
            },
        );
        if self.free.push(row, 0).is_ok() {
            self.queued.insert(row);
        }
    }

    /// The rows of `slot` that are still its own (a row the kernel gave
    /// back and took again for another task is not).
    fn rows_of(&self, slot: u32) -> impl Iterator<Item = PeerRow> + '_ {
        self.by_slot
            .get(&slot)
            .into_iter()
            .flatten()
            .map(|&row| self.rows.get(row))
            .filter(move |row| row.key.slot == slot)
    }

    /// A task's peers, and its unlisted figures as one more.
    pub fn peers(&self, slot: u32, unlisted: &PeerCounters) -> Vec<PeerTotals> {
        let mut peers: Vec<PeerTotals> = self.rows_of(slot).map(|row| peer_totals(&row)).collect();
        let mut rest = peer_totals(&PeerRow {
            key: PeerKey::default(),
            counters: *unlisted,
        });
        rest.peer = PeerId::Unlisted;
        // Unlisted bytes of every bucket but AF_UNIX's.
        rest.rx_bytes -= unlisted.net.rx_bytes[NetBucket::Unix as usize];
        rest.tx_bytes -= unlisted.net.tx_bytes[NetBucket::Unix as usize];
        let nothing = PeerTotals {
            peer: PeerId::Unlisted,
            ..PeerTotals::default()
        };
        if rest != nothing {
            peers.push(rest);
        }
        peers
    }

    /// A task's network totals: its peers' and its unlisted figures, and
    /// the AF_UNIX bytes its threads counted.
    pub fn totals(&self, slot: u32, unlisted: &PeerCounters, unix: (u64, u64)) -> NetTotals {
        let mut sum = *unlisted;
        for row in self.rows_of(slot) {
            add(&mut sum, &row.counters);
        }
        let unix_bucket = NetBucket::Unix as usize;
        let mut totals = NetTotals {
            tx: sum.net.tx_bytes,
            rx: sum.net.rx_bytes,
            tcp: Some(TcpHealth {
                retransmits: sum.retransmits,
                failed_connections: sum.failed_connections,
                resets_received: sum.resets_received,
            }),
        };
        totals.tx[unix_bucket] = unix.1;
        totals.rx[unix_bucket] = unix.0;
        totals
    }
}

fn add(sum: &mut PeerCounters, row: &PeerCounters) {
    for bucket in 0..NET_BUCKETS {
        sum.net.tx_bytes[bucket] += row.net.tx_bytes[bucket];
        sum.net.rx_bytes[bucket] += row.net.rx_bytes[bucket];
    }
    sum.connections_opened += row.connections_opened;
    sum.connections_closed += row.connections_closed;
    sum.failed_connections += row.failed_connections;
    sum.retransmits += row.retransmits;
    sum.resets_received += row.resets_received;
}

fn peer_totals(row: &PeerRow) -> PeerTotals {
    let counters = &row.counters;
    PeerTotals {
        peer: endpoint(&row.key).map_or(PeerId::Unconnected, PeerId::Endpoint),
        protocol: row.key.protocol,
        rx_bytes: counters.net.rx_bytes.iter().sum(),
        tx_bytes: counters.net.tx_bytes.iter().sum(),
        connections_opened: counters.connections_opened,
        connections_closed: counters.connections_closed,
        retransmits: if row.key.protocol == IPPROTO_TCP {
            counters.retransmits
        } else {
            0
        },
    }
}

/// The peer's address and port, as the kernel keeps them (network
/// order); IPv4-mapped IPv6 addresses read as IPv4.
fn endpoint(key: &PeerKey) -> Option<SocketAddr> {
    let port = u16::from_be(key.port);
    let ip = match key.family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(
            key.addr[0],
            key.addr[1],
            key.addr[2],
            key.addr[3],
        )),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(key.addr);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_read_as_the_kernel_keeps_them() {
        let mut key = PeerKey {
            family: AF_INET,
            protocol: IPPROTO_TCP,
            port: 8080u16.to_be(),
            ..PeerKey::default()
        };
        key.addr[..4].copy_from_slice(&[192, 0, 2, 7]);
        assert_eq!(endpoint(&key), Some("192.0.2.7:8080".parse().unwrap()));
        key.family = AF_INET6;
        key.addr = "::ffff:192.0.2.7".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(endpoint(&key), Some("192.0.2.7:8080".parse().unwrap()));
        key.addr = "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(endpoint(&key), Some("[2001:db8::2]:8080".parse().unwrap()));
        key.family = 0;
        assert_eq!(endpoint(&key), None, "unconnected");
    }
}
