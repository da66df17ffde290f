//! Network payload bytes per task against what the task's socket calls
//! returned, on loopback and across a veth pair between two namespaces.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use propmon::message::{TaskMetricsMessage, Traffic};
use serde::Deserialize;

use crate::{kernel_test, propmon, propmon_bin, run_to_end, scratch};

/// What the workload's socket calls returned, summed over all its processes.
#[derive(Debug, Deserialize)]
struct NetTally {
    tcp_tx: u64,
    tcp_rx: u64,
    udp_tx: u64,
    udp_rx: u64,
    unix_tx: u64,
    unix_rx: u64,
}

/// TCP and UDP, IPv4 and IPv6, loopback and veth, root and children,
/// sendmmsg/recvmmsg, sendfile, splice into a socket, a MSG_PEEK and a
/// refused connection that count nothing, AF_UNIX apart; all while an
/// untracked process moves bytes of its own, and with the peer untracked.
#[test]
fn network_bytes_equal_what_the_sockets_moved() {
    let Some(_serial) = kernel_test() else { return };
    let namespaces = NamespacePair::create();
    let mut peer = namespaces.spawn_in_b(&["workload", "net-peer", "--port", "7070"]);
    namespaces.wait_for_listener_in_b(7070);
    let mut noise = untracked_noise();

    let report = scratch("net.json");
    let mut command = propmon(&["run", "--interval", "1s", "--profile", "intensive", "--"]);
    command
        .args(["ip", "netns", "exec", &namespaces.a])
        .arg(propmon_bin())
        .args(["workload", "net", "--peer4", "192.0.2.2:7070"])
        .args(["--peer6", "[2001:db8::2]:7070", "--report"])
        .arg(&report);
    let run = run_to_end(command, Duration::from_secs(60));
    let _ = peer.kill();
    let _ = peer.wait();
    assert!(
        noise.wait().unwrap().success(),
        "the untracked noise failed"
    );
    assert!(run.status.success(), "{}", run.stderr);

    let tally: NetTally = serde_json::from_str(&std::fs::read_to_string(&report).unwrap())
        .unwrap_or_else(|err| panic!("no report ({err}); stderr:\n{}", run.stderr));
    let _ = std::fs::remove_file(&report);
    // Loopback both ways plus the peer's 2 x (16 + up) bytes make sure
    // every path was exercised.
    assert!(
        tally.tcp_tx > 3_000_000 && tally.udp_tx > 60_000,
        "{tally:?}"
    );
    assert_network_equals(run.final_message(), &tally);
    let peers = &run.final_message().details.network.as_ref().unwrap().peers;
    for (peer, protocol) in [("192.0.2.2:7070", "tcp"), ("[2001:db8::2]:7070", "tcp")] {
        assert!(
            peers
                .iter()
                .any(|p| p.peer == peer && p.protocol.as_deref() == Some(protocol)),
            "no {protocol} peer {peer} in {peers:#?}"
        );
    }
}

/// 8 threads and 4 processes sending 64-byte messages at once lose no byte.
#[test]
fn concurrent_small_sends_lose_nothing() {
    let Some(_serial) = kernel_test() else { return };
    let report = scratch("hammer.json");
    let mut command = propmon(&["run", "--interval", "1s", "--"]);
    command
        .arg(propmon_bin())
        .args([
            "workload",
            "net-hammer",
            "--threads",
            "8",
            "--processes",
            "4",
        ])
        .args(["--sends", "20000", "--size", "64", "--report"])
        .arg(&report);
    let run = run_to_end(command, Duration::from_secs(120));
    assert!(run.status.success(), "{}", run.stderr);
    let tally: NetTally = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let _ = std::fs::remove_file(&report);
    assert_eq!(
        tally.tcp_tx,
        12 * 20_000 * 64,
        "the workload itself fell short"
    );
    assert_network_equals(run.final_message(), &tally);
}

fn assert_network_equals(last: &TaskMetricsMessage, tally: &NetTally) {
    let traffic = |rx_bytes, tx_bytes| Traffic { rx_bytes, tx_bytes };
    let network = last.details.network.as_ref().expect("details.network");
    let buckets = [
        network.tcp.traffic(),
        network.udp,
        network.other,
        network.unix,
    ];
    let expected = [
        traffic(tally.tcp_rx, tally.tcp_tx),
        traffic(tally.udp_rx, tally.udp_tx),
        traffic(0, 0),
        traffic(tally.unix_rx, tally.unix_tx),
    ];
    assert_eq!(buckets, expected, "tcp, udp, other, unix");
    assert_eq!(
        last.metrics.network_tx_bytes,
        Some(tally.tcp_tx + tally.udp_tx)
    );
    assert_eq!(
        last.metrics.network_rx_bytes,
        Some(tally.tcp_rx + tally.udp_rx)
    );
    // Whatever the sockets (unconnected UDP, spliced reads, AF_UNIX
    // apart), the peers add up to the totals.
    let peers_tx: u64 = network.peers.iter().map(|p| p.tx_bytes).sum();
    let peers_rx: u64 = network.peers.iter().map(|p| p.rx_bytes).sum();
    assert_eq!(
        (Some(peers_tx), Some(peers_rx)),
        (last.metrics.network_tx_bytes, last.metrics.network_rx_bytes),
        "{:#?}",
        network.peers
    );
}

/// Untracked traffic on loopback during the tracked run.
fn untracked_noise() -> Child {
    Command::new(propmon_bin())
        .args([
            "workload",
            "net-hammer",
            "--threads",
            "2",
            "--processes",
            "1",
        ])
        .args(["--sends", "100000", "--size", "512"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Two network namespaces joined by a veth pair, with documentation-range
/// addresses (192.0.2.0/24, 2001:db8::/64): traffic never leaves them.
/// Removed on drop, veth included.
pub(crate) struct NamespacePair {
    pub(crate) a: String,
    pub(crate) b: String,
}

impl NamespacePair {
    pub(crate) fn create() -> Self {
        let id = std::process::id() % 100_000;
        let pair = NamespacePair {
            a: format!("pm{id}a"),
            b: format!("pm{id}b"),
        };
        let (veth_a, veth_b) = (format!("pm{id}va"), format!("pm{id}vb"));
        for ns in [&pair.a, &pair.b] {
            ip(&["netns", "add", ns]);
        }
        ip(&[
            "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b,
        ]);
        for (ns, veth, v4, v6) in [
            (&pair.a, &veth_a, "192.0.2.1/24", "2001:db8::1/64"),
            (&pair.b, &veth_b, "192.0.2.2/24", "2001:db8::2/64"),
        ] {
            ip(&["link", "set", veth, "netns", ns]);
            ip(&["-n", ns, "addr", "add", v4, "dev", veth]);
            ip(&["-n", ns, "addr", "add", v6, "dev", veth, "nodad"]);
            ip(&["-n", ns, "link", "set", veth, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    pub(crate) fn spawn_in_b(&self, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.b])
            .arg(propmon_bin())
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    pub(crate) fn wait_for_listener_in_b(&self, port: u16) {
        for _ in 0..250 {
            let listening = Command::new("ip")
                .args(["netns", "exec", &self.b, "ss", "-Hltn"])
                .arg(format!("sport = :{port}"))
                .output()
                .unwrap();
            if !listening.stdout.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the peer never listened on port {port}");
    }
}

impl Drop for NamespacePair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
