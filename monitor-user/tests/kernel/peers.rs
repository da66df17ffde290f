//! Issue 11: network bytes per remote endpoint, connections and TCP's
//! health per task, against what the workload's own socket calls returned
//! (and `TCP_INFO` said), across a veth pair between two namespaces.

use std::{process::Command, time::Duration};

use propmon::message::{Peer, TaskMetricsMessage};
use serde::Deserialize;

use crate::{
    kernel_test, net::NamespacePair, propmon, propmon_bin, read_report, run_to_end, scratch,
};

#[derive(Debug, Deserialize)]
struct PeerTally {
    peer: String,
    protocol: String,
    tx_bytes: u64,
    rx_bytes: u64,
    connections: u64,
    retransmits: u64,
}

/// Two net-peers in namespace B, on TCP 7070 and 7071 (both also answer
/// UDP).
fn peers_in_b(namespaces: &NamespacePair) -> Vec<std::process::Child> {
    let peers = ["7070", "7071"]
        .map(|port| namespaces.spawn_in_b(&["workload", "net-peer", "--port", port]));
    namespaces.wait_for_listener_in_b(7070);
    namespaces.wait_for_listener_in_b(7071);
    peers.into()
}

/// `propmon run` of the peers workload in namespace A, with `args`.
fn tracked_peers(
    namespaces: &NamespacePair,
    args: &[&str],
) -> (TaskMetricsMessage, Vec<PeerTally>) {
    let report = scratch("peers.json");
    let mut command = propmon(&["run", "--interval", "1s", "--profile", "intensive", "--"]);
    command
        .args(["ip", "netns", "exec", &namespaces.a])
        .arg(propmon_bin())
        .args(["workload", "peers"])
        .args(args)
        .arg("--report")
        .arg(&report);
    let run = run_to_end(command, Duration::from_secs(120));
    assert!(run.status.success(), "{}", run.stderr);
    (run.final_message().clone(), read_report(&report))
}

fn find<'a>(peers: &'a [Peer], peer: &str, protocol: &str) -> &'a Peer {
    peers
        .iter()
        .find(|p| p.peer == peer && p.protocol.as_deref() == Some(protocol))
        .unwrap_or_else(|| panic!("no {protocol} peer {peer} in {peers:#?}"))
}

/// Three peers (two TCP ports, a connected UDP socket) and 200 TCP
/// connections of a few ms each: every peer's bytes are exact, every
/// connection is counted opened and closed, and the peers (their `other`
/// entry included) add up to the task's totals.
#[test]
fn each_peers_bytes_and_connections_are_exact() {
    let Some(_serial) = kernel_test() else { return };
    let namespaces = NamespacePair::create();
    let mut servers = peers_in_b(&namespaces);
    let (last, tallies) = tracked_peers(
        &namespaces,
        &[
            "--tcp",
            "192.0.2.2:7070",
            "--tcp",
            "192.0.2.2:7071",
            "--udp",
            "192.0.2.2:7070",
            "--short",
            "200",
        ],
    );
    for server in &mut servers {
        let _ = server.kill();
        let _ = server.wait();
    }
    let network = last.details.network.as_ref().expect("details.network");
    for tally in &tallies {
        let peer = find(&network.peers, &tally.peer, &tally.protocol);
        assert_eq!(
            (peer.tx_bytes, peer.rx_bytes),
            (tally.tx_bytes, tally.rx_bytes),
            "{tally:?}"
        );
        if tally.protocol == "tcp" {
            assert_eq!(peer.connections_opened, tally.connections, "{tally:?}");
            assert_eq!(peer.connections_closed, tally.connections, "{tally:?}");
            assert_eq!(peer.connections_open, 0);
        }
    }
    assert_eq!(
        tallies[1].connections, 201,
        "the long exchange and 200 short ones"
    );
    let tx: u64 = network.peers.iter().map(|p| p.tx_bytes).sum();
    let rx: u64 = network.peers.iter().map(|p| p.rx_bytes).sum();
    assert_eq!(Some(tx), last.metrics.network_tx_bytes);
    assert_eq!(Some(rx), last.metrics.network_rx_bytes);
    let sent: u64 = tallies.iter().map(|t| t.tx_bytes).sum();
    assert_eq!(
        Some(sent),
        last.metrics.network_tx_bytes,
        "nothing else was sent"
    );
}

/// Packets to one peer are dropped at random where they arrive (nftables
/// in namespace B: a drop in A's own output hook fails the send locally,
/// which TCP retries as new data, not as a retransmission):
/// the task's retransmissions are its own sockets' (`TCP_INFO`), not
/// those of an untracked process sending to the same peer meanwhile.
#[test]
fn retransmits_go_to_the_task_whose_socket_it_is() {
    let Some(_serial) = kernel_test() else { return };
    let namespaces = NamespacePair::create();
    let mut servers = peers_in_b(&namespaces);
    let nft = |rule: &str| {
        let status = Command::new("ip")
            .args(["netns", "exec", &namespaces.b, "nft"])
            .args(rule.split(' '))
            .status()
            .expect("nft (nftables, installed by cargo xtask setup)");
        assert!(status.success(), "nft {rule}");
    };
    nft("add table inet lossy");
    nft("add chain inet lossy in { type filter hook input priority 0 ; }");
    nft("add rule inet lossy in ip saddr 192.0.2.1 tcp dport 7070 numgen random mod 10 0 drop");
    let untracked = Command::new("ip")
        .args(["netns", "exec", &namespaces.a])
        .arg(propmon_bin())
        .args([
            "workload",
            "peers",
            "--tcp",
            "192.0.2.2:7070",
            "--bytes",
            "4000000",
        ])
        .arg("--report")
        .arg(scratch("untracked-peers.json"))
        .spawn()
        .unwrap();
    let (last, tallies) = tracked_peers(
        &namespaces,
        &[
            "--tcp",
            "192.0.2.2:7070",
            "--bytes",
            "1000000",
            "--short",
            "20",
        ],
    );
    let mut untracked = untracked;
    assert!(untracked.wait().unwrap().success());
    let theirs: Vec<PeerTally> = read_report(&scratch("untracked-peers.json"));
    for server in &mut servers {
        let _ = server.kill();
        let _ = server.wait();
    }
    let ours = &tallies[0];
    assert!(
        ours.retransmits > 0,
        "10% loss and no retransmission? {ours:?}"
    );
    assert!(theirs[0].retransmits > 0, "{theirs:?}");
    let network = last.details.network.as_ref().unwrap();
    let counted = network.tcp.retransmits.unwrap();
    // A FIN lost after TCP_INFO was read is retransmitted later: at most
    // one more per connection.
    assert!(
        (ours.retransmits..=ours.retransmits + ours.connections).contains(&counted),
        "task counted {counted}, its sockets {} (the untracked sender's {})",
        ours.retransmits,
        theirs[0].retransmits
    );
    let peer = find(&network.peers, "192.0.2.2:7070", "tcp");
    assert_eq!(peer.retransmits, Some(counted));
}

/// 300 UDP peers, more rows than the agent maps at first (it maps the
/// peer rows as far as they are used): every row's bytes are read, the
/// 256 largest peers are listed with their exact bytes, and the rest are
/// in `other`.
#[test]
fn rows_past_the_first_mapping_are_read() {
    let Some(_serial) = kernel_test() else { return };
    let report = scratch("fanout.json");
    let mut command = propmon(&[
        "run",
        "--profile-json",
        r#"{"interval": 1, "max_peers": 256, "collect_network_io": true}"#,
        "--",
    ]);
    command
        .arg(propmon_bin())
        .args(["workload", "peers", "--udp-fanout", "300", "--report"])
        .arg(&report);
    let run = run_to_end(command, Duration::from_secs(120));
    assert!(run.status.success(), "{}", run.stderr);
    let tallies: Vec<PeerTally> = read_report(&report);
    assert_eq!(tallies.len(), 300);
    let last = run.final_message();
    let network = last.details.network.as_ref().expect("details.network");
    let listed: Vec<&Peer> = network.peers.iter().filter(|p| p.peer != "other").collect();
    assert_eq!(listed.len(), 256, "max_peers of them listed");
    for peer in listed {
        let tally = tallies
            .iter()
            .find(|t| t.peer == peer.peer)
            .unwrap_or_else(|| panic!("{} was not a peer of the workload", peer.peer));
        assert_eq!(
            (peer.tx_bytes, peer.rx_bytes),
            (tally.tx_bytes, 0),
            "{}",
            peer.peer
        );
    }
    let sent: u64 = tallies.iter().map(|t| t.tx_bytes).sum();
    let counted: u64 = network.peers.iter().map(|p| p.tx_bytes).sum();
    assert_eq!(counted, sent, "every peer's bytes, listed or in other");
    assert_eq!(last.metrics.network_tx_bytes, Some(sent));
}
