//! Network workloads: known payload bytes over TCP, UDP and AF_UNIX, on
//! loopback and to a peer in another network namespace, through every
//! socket call family. The tally is the sum of what the calls returned.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    ops::AddAssign,
    os::{
        fd::AsRawFd,
        unix::net::{UnixDatagram, UnixStream},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::{ChildResult, reap_all};

/// Payload bytes moved, as the socket calls reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetTally {
    pub tcp_tx: u64,
    pub tcp_rx: u64,
    pub udp_tx: u64,
    pub udp_rx: u64,
    pub unix_tx: u64,
    pub unix_rx: u64,
}

impl AddAssign for NetTally {
    fn add_assign(&mut self, other: Self) {
        self.tcp_tx += other.tcp_tx;
        self.tcp_rx += other.tcp_rx;
        self.udp_tx += other.udp_tx;
        self.udp_rx += other.udp_rx;
        self.unix_tx += other.unix_tx;
        self.unix_rx += other.unix_rx;
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// Everything at once: the root and forked children, loopback and peer.
pub fn net(peer4: Option<SocketAddr>, peer6: Option<SocketAddr>) -> anyhow::Result<NetTally> {
    super::become_subreaper()?;
    // Children first, while this process is single-threaded.
    let mut children = vec![ChildResult::spawn(|| {
        let mut tally = tcp_loopback("[::1]:0", 700_000, 200_000)?;
        tally += udp_datagrams("[::1]:0", 10, 1200)?;
        Ok(tally)
    })?];
    if let Some(peer) = peer6 {
        children.push(ChildResult::spawn(move || {
            let mut tally = tcp_peer(peer, 400_000, 100_000)?;
            tally += udp_echo(peer, 10, 1200)?;
            Ok(tally)
        })?);
    }

    let mut total = tcp_loopback("127.0.0.1:0", 1_000_000, 300_000)?;
    total += udp_batched("127.0.0.1:0", 64, 1000)?;
    total += sendfile_loopback(256 * 1024)?;
    total += splice_into_socket(128 * 1024)?;
    total += refused()?;
    total += unix_sockets(100_000)?;
    if let Some(peer) = peer4 {
        total += tcp_peer(peer, 500_000, 200_000)?;
        total += udp_echo(peer, 10, 1200)?;
    }
    for child in children {
        total += child.wait::<NetTally>()?;
    }
    reap_all()?;
    Ok(total)
}

/// Ground truth of the `runtime` workload.
#[derive(Debug, Serialize)]
pub struct RuntimeTruth {
    /// getrusage(SELF) + getrusage(CHILDREN), ns.
    pub cpu_ns: u64,
    pub net: NetTally,
}

/// A host runtime stand-in: a child moves `bytes` over TCP loopback and
/// burns CPU, the root burns too and reaps it.
pub fn runtime(burn: Duration, bytes: usize) -> anyhow::Result<RuntimeTruth> {
    super::become_subreaper()?;
    let child = ChildResult::spawn(move || {
        let tally = tcp_loopback("127.0.0.1:0", bytes, bytes / 2)?;
        super::burn(burn);
        Ok(tally)
    })?;
    super::burn(burn);
    let net = child.wait::<NetTally>()?;
    reap_all()?;
    let cpu_ns = super::rusage_cpu_ns(nix::sys::resource::UsageWho::RUSAGE_SELF)?
        + super::rusage_cpu_ns(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    Ok(RuntimeTruth { cpu_ns, net })
}

/// A TCP exchange on loopback: the client sends `up` bytes and half-closes,
/// the server (a thread of this process) answers `down` bytes.
fn tcp_loopback(bind: &str, up: usize, down: usize) -> anyhow::Result<NetTally> {
    let listener = TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> anyhow::Result<NetTally> {
        let (mut stream, _) = listener.accept()?;
        let received = read_to_end(&mut stream)?;
        stream.write_all(&vec![b'd'; down])?;
        Ok(NetTally {
            tcp_rx: received,
            tcp_tx: down as u64,
            ..NetTally::default()
        })
    });
    let mut client = TcpStream::connect(addr)?;
    client.write_all(&vec![b'u'; up])?;
    client.shutdown(Shutdown::Write)?;
    let received = read_to_end(&mut client)?;
    let mut tally = join(server)?;
    tally += NetTally {
        tcp_tx: up as u64,
        tcp_rx: received,
        ..NetTally::default()
    };
    Ok(tally)
}

/// `count` datagrams sent with one sendmmsg and received with recvmmsg,
/// after a MSG_PEEK that must count nothing.
fn udp_batched(bind: &str, count: usize, size: usize) -> anyhow::Result<NetTally> {
    let receiver = UdpSocket::bind(bind)?;
    receiver.set_read_timeout(Some(TIMEOUT))?;
    let sender = UdpSocket::bind(bind)?;
    sender.connect(receiver.local_addr()?)?;

    let payload = vec![b'm'; size];
    let mut iov: Vec<libc::iovec> = (0..count)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: size,
        })
        .collect();
    let mut messages: Vec<libc::mmsghdr> = iov.iter_mut().map(mmsghdr).collect();
    // SAFETY: valid descriptors and buffers of the right lengths.
    let sent =
        unsafe { libc::sendmmsg(sender.as_raw_fd(), messages.as_mut_ptr(), count as u32, 0) };
    if sent < 0 {
        bail!("sendmmsg: {}", std::io::Error::last_os_error());
    }
    let tx: u64 = messages[..sent as usize]
        .iter()
        .map(|m| u64::from(m.msg_len))
        .sum();

    let mut peek = [0u8; 64];
    // SAFETY: valid buffer.
    let peeked = unsafe {
        libc::recv(
            receiver.as_raw_fd(),
            peek.as_mut_ptr().cast(),
            peek.len(),
            libc::MSG_PEEK,
        )
    };
    if peeked <= 0 {
        bail!("MSG_PEEK: {}", std::io::Error::last_os_error());
    }

    let mut buffers = vec![vec![0u8; size]; sent as usize];
    let mut rx = 0u64;
    let mut received = 0;
    while received < sent as usize {
        let mut iov: Vec<libc::iovec> = buffers[received..]
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut messages: Vec<libc::mmsghdr> = iov.iter_mut().map(mmsghdr).collect();
        // SAFETY: valid descriptors and buffers; MSG_WAITFORONE returns what is queued.
        let got = unsafe {
            libc::recvmmsg(
                receiver.as_raw_fd(),
                messages.as_mut_ptr(),
                messages.len() as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if got <= 0 {
            break; // timeout: the rest was dropped, and is not tallied
        }
        rx += messages[..got as usize]
            .iter()
            .map(|m| u64::from(m.msg_len))
            .sum::<u64>();
        received += got as usize;
    }
    Ok(NetTally {
        udp_tx: tx,
        udp_rx: rx,
        ..NetTally::default()
    })
}

fn mmsghdr(iov: &mut libc::iovec) -> libc::mmsghdr {
    // SAFETY: all-zero is a valid msghdr (no name, no control data).
    let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
    header.msg_hdr.msg_iov = iov;
    header.msg_hdr.msg_iovlen = 1;
    header
}

/// Plain sendto/recvfrom datagrams between two sockets.
fn udp_datagrams(bind: &str, count: usize, size: usize) -> anyhow::Result<NetTally> {
    let a = UdpSocket::bind(bind)?;
    let b = UdpSocket::bind(bind)?;
    b.set_read_timeout(Some(TIMEOUT))?;
    let mut tally = NetTally::default();
    let mut buffer = vec![0u8; size];
    for _ in 0..count {
        tally.udp_tx += a.send_to(&vec![b'g'; size], b.local_addr()?)? as u64;
        tally.udp_rx += b.recv_from(&mut buffer)?.0 as u64;
    }
    Ok(tally)
}

/// A file sent with sendfile(2) to a TCP socket.
fn sendfile_loopback(size: usize) -> anyhow::Result<NetTally> {
    let path = std::env::temp_dir().join(format!("propmon-sendfile-{}", std::process::id()));
    std::fs::write(&path, vec![b'f'; size])?;
    let file = std::fs::File::open(&path)?;
    std::fs::remove_file(&path)?;
    let (client, server) = loopback_sink()?;
    let mut sent = 0u64;
    while sent < size as u64 {
        // SAFETY: valid descriptors; NULL offset uses the file position.
        let n = unsafe {
            libc::sendfile(
                client.as_raw_fd(),
                file.as_raw_fd(),
                std::ptr::null_mut(),
                size - sent as usize,
            )
        };
        if n <= 0 {
            bail!("sendfile: {}", std::io::Error::last_os_error());
        }
        sent += n as u64;
    }
    drop(client);
    let mut tally = join(server)?;
    tally.tcp_tx += sent;
    Ok(tally)
}

/// Bytes moved from a pipe into a TCP socket with splice(2).
fn splice_into_socket(size: usize) -> anyhow::Result<NetTally> {
    let (client, server) = loopback_sink()?;
    let (pipe_out, pipe_in) = nix::unistd::pipe()?;
    let mut pipe_in = std::fs::File::from(pipe_in);
    let mut spliced = 0u64;
    let chunk = vec![b's'; 16 * 1024];
    while spliced < size as u64 {
        pipe_in.write_all(&chunk)?;
        let mut in_pipe = chunk.len();
        while in_pipe > 0 {
            // SAFETY: valid descriptors, NULL offsets (pipe and socket).
            let n = unsafe {
                libc::splice(
                    pipe_out.as_raw_fd(),
                    std::ptr::null_mut(),
                    client.as_raw_fd(),
                    std::ptr::null_mut(),
                    in_pipe,
                    0,
                )
            };
            if n <= 0 {
                bail!("splice: {}", std::io::Error::last_os_error());
            }
            in_pipe -= n as usize;
            spliced += n as u64;
        }
    }
    drop(client);
    let mut tally = join(server)?;
    tally.tcp_tx += spliced;
    Ok(tally)
}

/// A TCP connection to a reader thread of this process, which tallies what
/// it receives until the client closes.
fn loopback_sink() -> anyhow::Result<(TcpStream, thread::JoinHandle<anyhow::Result<NetTally>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> anyhow::Result<NetTally> {
        let (mut stream, _) = listener.accept()?;
        Ok(NetTally {
            tcp_rx: read_to_end(&mut stream)?,
            ..NetTally::default()
        })
    });
    Ok((TcpStream::connect(addr)?, server))
}

/// A refused TCP connection, a send on it, and a UDP receive that fails
/// with ECONNREFUSED: none of them moves a byte.
fn refused() -> anyhow::Result<NetTally> {
    let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?; // closed when dropped
    // SAFETY: plain socket calls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let target = match closed {
            SocketAddr::V4(v4) => libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            },
            SocketAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
        };
        let connected = libc::connect(
            fd,
            (&raw const target).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        let sent = libc::send(fd, b"lost".as_ptr().cast(), 4, libc::MSG_NOSIGNAL);
        libc::close(fd);
        if connected == 0 || sent >= 0 {
            bail!("a connection to a closed port succeeded");
        }
    }
    // UDP: the datagram leaves (and counts); the ICMP error makes recv fail.
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    udp.set_read_timeout(Some(Duration::from_secs(1)))?;
    udp.connect(closed)?;
    let sent = udp.send(b"nobody listens")? as u64;
    let mut buffer = [0u8; 64];
    if udp.recv(&mut buffer).is_ok() {
        bail!("a datagram came back from a closed port");
    }
    Ok(NetTally {
        udp_tx: sent,
        ..NetTally::default()
    })
}

/// AF_UNIX stream and datagram pairs: reported apart from the network.
fn unix_sockets(size: usize) -> anyhow::Result<NetTally> {
    let (mut a, mut b) = UnixStream::pair()?;
    let writer = thread::spawn(move || -> std::io::Result<u64> {
        a.write_all(&vec![b'x'; size])?;
        Ok(size as u64)
    });
    let mut received = vec![0u8; size];
    b.read_exact(&mut received)?;
    let sent = writer.join().expect("unix writer")?;
    let (c, d) = UnixDatagram::pair()?;
    let mut tally = NetTally {
        unix_tx: sent,
        unix_rx: size as u64,
        ..NetTally::default()
    };
    let mut buffer = [0u8; 600];
    for _ in 0..5 {
        tally.unix_tx += c.send(&[b'y'; 500])? as u64;
        tally.unix_rx += d.recv(&mut buffer)? as u64;
    }
    Ok(tally)
}

/// A TCP exchange with `propmon workload net-peer`: a 16-byte header
/// (bytes up, bytes down, big-endian u64), `up` bytes, then `down` back.
fn tcp_peer(peer: SocketAddr, up: u64, down: u64) -> anyhow::Result<NetTally> {
    let mut stream = TcpStream::connect_timeout(&peer, TIMEOUT)
        .with_context(|| format!("connecting to the peer {peer}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&up.to_be_bytes());
    header[8..].copy_from_slice(&down.to_be_bytes());
    stream.write_all(&header)?;
    stream.write_all(&vec![b'p'; up as usize])?;
    let received = read_to_end(&mut stream)?;
    Ok(NetTally {
        tcp_tx: 16 + up,
        tcp_rx: received,
        ..NetTally::default()
    })
}

/// Datagrams echoed by the peer.
fn udp_echo(peer: SocketAddr, count: usize, size: usize) -> anyhow::Result<NetTally> {
    let bind = if peer.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(peer)?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut tally = NetTally::default();
    let mut buffer = vec![0u8; size];
    for _ in 0..count {
        tally.udp_tx += socket.send(&vec![b'e'; size])? as u64;
        if let Ok(n) = socket.recv(&mut buffer) {
            tally.udp_rx += n as u64;
        }
    }
    Ok(tally)
}

/// The peer side, run untracked in the other namespace: TCP per the
/// header protocol of `tcp_peer`, UDP echo, both on `[::]:port`.
pub fn peer(port: u16) -> anyhow::Result<()> {
    let udp = UdpSocket::bind(("::", port)).context("binding the UDP echo")?;
    thread::spawn(move || {
        let mut buffer = vec![0u8; 65536];
        while let Ok((n, from)) = udp.recv_from(&mut buffer) {
            let _ = udp.send_to(&buffer[..n], from);
        }
    });
    let listener = TcpListener::bind(("::", port)).context("binding the TCP peer")?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        thread::spawn(move || -> std::io::Result<()> {
            let mut header = [0u8; 16];
            stream.read_exact(&mut header)?;
            let up = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
            let down = u64::from_be_bytes(header[8..].try_into().expect("8 bytes"));
            std::io::copy(&mut (&mut stream).take(up), &mut std::io::sink())?;
            stream.write_all(&vec![b'q'; down as usize])
        });
    }
    Ok(())
}

/// Many small sends at once from `threads` threads and `processes`
/// processes, each on its own TCP connection to a reader in this process.
pub fn hammer(
    threads: usize,
    processes: usize,
    sends: usize,
    size: usize,
) -> anyhow::Result<NetTally> {
    super::become_subreaper()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    // Children first, while single-threaded; they wait in the backlog.
    let children = (0..processes)
        .map(|_| ChildResult::spawn(move || small_sends(addr, sends, size)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let readers = thread::spawn(move || -> anyhow::Result<NetTally> {
        let handles: Vec<_> = (0..threads + processes)
            .map(|_| {
                let (mut stream, _) = listener.accept()?;
                Ok(thread::spawn(move || read_to_end(&mut stream)))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut tally = NetTally::default();
        for handle in handles {
            tally.tcp_rx += handle.join().expect("reader")?;
        }
        Ok(tally)
    });
    let senders: Vec<_> = (0..threads)
        .map(|_| thread::spawn(move || small_sends(addr, sends, size)))
        .collect();
    let mut total = NetTally::default();
    for sender in senders {
        total += sender.join().expect("sender")?;
    }
    for child in children {
        total += child.wait::<NetTally>()?;
    }
    total += join(readers)?;
    reap_all()?;
    Ok(total)
}

fn small_sends(addr: SocketAddr, sends: usize, size: usize) -> anyhow::Result<NetTally> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let payload = vec![b'h'; size];
    let mut sent = 0u64;
    for _ in 0..sends {
        sent += stream.write(&payload)? as u64;
    }
    Ok(NetTally {
        tcp_tx: sent,
        ..NetTally::default()
    })
}

/// Reads until EOF; returns the bytes read.
fn read_to_end(stream: &mut TcpStream) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buffer)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

fn join(handle: thread::JoinHandle<anyhow::Result<NetTally>>) -> anyhow::Result<NetTally> {
    handle.join().expect("workload thread panicked")
}

/// What one peer of the `peers` workload saw, as the socket calls
/// returned it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTally {
    pub peer: String,
    pub protocol: String,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub connections: u64,
    /// TCP segments the kernel retransmitted on these connections
    /// (`TCP_INFO` read just before each close).
    pub retransmits: u64,
}

/// Bytes to and from `propmon workload net-peer` instances: one long TCP
/// exchange per `tcp` address, `short` brief TCP connections to the last
/// of them, and datagrams on a connected UDP socket to `udp`.
pub fn peers(
    tcp: &[SocketAddr],
    udp: Option<SocketAddr>,
    short: usize,
    bytes: u64,
) -> anyhow::Result<Vec<PeerTally>> {
    let mut tallies = Vec::new();
    for (index, &peer) in tcp.iter().enumerate() {
        let (up, down) = (bytes * (index as u64 + 1), bytes / 2);
        let mut tally = tcp_exchange(peer, up, down)?;
        if index + 1 == tcp.len() {
            for _ in 0..short {
                let brief = tcp_exchange(peer, 1000, 100)?;
                tally.tx_bytes += brief.tx_bytes;
                tally.rx_bytes += brief.rx_bytes;
                tally.connections += 1;
                tally.retransmits += brief.retransmits;
            }
        }
        tallies.push(tally);
    }
    if let Some(peer) = udp {
        let echoed = udp_echo(peer, 200, 500)?;
        tallies.push(PeerTally {
            peer: peer.to_string(),
            protocol: "udp".to_owned(),
            tx_bytes: echoed.udp_tx,
            rx_bytes: echoed.udp_rx,
            ..PeerTally::default()
        });
    }
    Ok(tallies)
}

/// One datagram of a different size to each of `count` loopback
/// receivers, each from its own connected socket: `count` UDP peers.
pub fn udp_fanout(count: usize) -> anyhow::Result<Vec<PeerTally>> {
    let receivers = (0..count)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("binding the fan-out receivers")?;
    let mut tallies = Vec::with_capacity(count);
    for (index, receiver) in receivers.iter().enumerate() {
        let to = receiver.local_addr()?;
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        sender.connect(to)?;
        let sent = sender.send(&vec![b'f'; 100 + index])? as u64;
        tallies.push(PeerTally {
            peer: to.to_string(),
            protocol: "udp".to_owned(),
            tx_bytes: sent,
            ..PeerTally::default()
        });
    }
    Ok(tallies)
}

/// One TCP exchange with a net-peer, its retransmissions included.
fn tcp_exchange(peer: SocketAddr, up: u64, down: u64) -> anyhow::Result<PeerTally> {
    let mut stream = TcpStream::connect_timeout(&peer, TIMEOUT)
        .with_context(|| format!("connecting to the peer {peer}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&up.to_be_bytes());
    header[8..].copy_from_slice(&down.to_be_bytes());
    stream.write_all(&header)?;
    stream.write_all(&vec![b'p'; up as usize])?;
    let received = read_to_end(&mut stream)?;
    let retransmits = total_retransmits(&stream);
    Ok(PeerTally {
        peer: peer.to_string(),
        protocol: "tcp".to_owned(),
        tx_bytes: 16 + up,
        rx_bytes: received,
        connections: 1,
        retransmits,
    })
}

/// `tcpi_total_retrans` of a connection (0 if unreadable).
fn total_retransmits(stream: &TcpStream) -> u64 {
    // SAFETY: TCP_INFO fills a zeroed struct of the length passed.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        let ret = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut len,
        );
        if ret == 0 {
            u64::from(info.tcpi_total_retrans)
        } else {
            0
        }
    }
}
