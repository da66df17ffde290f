//! Benchmark loads: the kinds of work whose slowdown under propmon matters
//! (context switches, TCP throughput, small sends, synchronous writes,
//! process creation). Each times its own core loop, so that the agent's
//! start-up is not counted against the load.

use std::{
    fs::OpenOptions,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    os::unix::fs::OpenOptionsExt as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::sys::resource::UsageWho;
use serde::Serialize;

use super::{become_subreaper, burn, reap_all, rusage_cpu_ns, spawn_child};
use crate::cli::BenchLoad;

#[derive(Debug, Default, Serialize)]
pub struct Timing {
    /// Wall-clock time of the core loop.
    pub seconds: f64,
    /// Operations done in it (rounds, bytes, datagrams, writes, processes).
    pub operations: u64,
    /// Ground truth of the whole tree, for the storm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth_cpu_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth_write_bytes: Option<u64>,
}

pub fn run(load: BenchLoad) -> anyhow::Result<Timing> {
    match load {
        BenchLoad::Pingpong { rounds } => pingpong(rounds),
        BenchLoad::TcpStream { seconds } => tcp_stream(Duration::from_secs_f64(seconds)),
        BenchLoad::UdpSends { count } => udp_sends(count),
        BenchLoad::TcpConnections { count } => tcp_connections(count),
        BenchLoad::SyncWrites { count, dir } => sync_writes(count, &dir),
        BenchLoad::Spawn { count } => spawn(count),
        BenchLoad::Tick { period_ms, spin_us } => loop {
            std::thread::sleep(Duration::from_millis(period_ms));
            burn(Duration::from_micros(spin_us));
        },
        BenchLoad::Storm {
            count,
            ms,
            bytes,
            dir,
        } => storm(count, Duration::from_millis(ms), bytes, &dir),
    }
}

fn timed(operations: u64, started: Instant) -> Timing {
    Timing {
        seconds: started.elapsed().as_secs_f64(),
        operations,
        ..Timing::default()
    }
}

fn pingpong(rounds: u64) -> anyhow::Result<Timing> {
    let (to_child_read, to_child_write) = nix::unistd::pipe()?;
    let (to_parent_read, to_parent_write) = nix::unistd::pipe()?;
    let mut to_child = std::fs::File::from(to_child_write);
    let mut from_child = std::fs::File::from(to_parent_read);
    spawn_child(move || {
        let mut input = std::fs::File::from(to_child_read);
        let mut output = std::fs::File::from(to_parent_write);
        let mut byte = [0u8; 1];
        // The child holds a copy of the parent's write end too, so it stops
        // on a 0 byte rather than at end of file.
        while input.read_exact(&mut byte).is_ok() && byte[0] != 0 {
            if output.write_all(&byte).is_err() {
                break;
            }
        }
    })?;
    let started = Instant::now();
    let mut byte = [1u8; 1];
    for _ in 0..rounds {
        to_child.write_all(&byte)?;
        from_child.read_exact(&mut byte)?;
    }
    let timing = timed(rounds, started);
    to_child.write_all(&[0])?;
    reap_all()?;
    Ok(timing)
}

fn tcp_stream(duration: Duration) -> anyhow::Result<Timing> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; 256 * 1024];
        let mut total = 0;
        loop {
            match stream.read(&mut buffer)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut stream = TcpStream::connect(address)?;
    let chunk = vec![7u8; 64 * 1024];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        stream.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    drop(stream);
    let received = reader.join().expect("reader")?;
    let timing = timed(sent, started);
    if received != sent {
        bail!("sent {sent} bytes, received {received}");
    }
    Ok(timing)
}

fn udp_sends(count: u64) -> anyhow::Result<Timing> {
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    sender.connect(receiver.local_addr()?)?;
    receiver.set_nonblocking(true)?;
    let payload = [9u8; 64];
    let mut buffer = [0u8; 64];
    let started = Instant::now();
    for _ in 0..count {
        sender.send(&payload)?;
        // Drain as we go so that the receive queue never overflows.
        while receiver.recv(&mut buffer).is_ok() {}
    }
    Ok(timed(count, started))
}

fn tcp_connections(count: u64) -> anyhow::Result<Timing> {
    const UP: usize = 1024;
    const DOWN: usize = 100;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let mut request = [0u8; UP];
        for _ in 0..count {
            let (mut stream, _) = listener.accept()?;
            stream.read_exact(&mut request)?;
            stream.write_all(&[5u8; DOWN])?;
        }
        Ok(())
    });
    let started = Instant::now();
    let mut answer = [0u8; DOWN];
    for _ in 0..count {
        let mut stream = TcpStream::connect(address)?;
        stream.write_all(&[3u8; UP])?;
        stream.read_exact(&mut answer)?;
        // The server closes first, so TIME_WAIT stays on its one port
        // rather than on thousands of ephemeral ones.
        if stream.read(&mut answer)? != 0 {
            bail!("the server sent more than {DOWN} bytes");
        }
    }
    let timing = timed(count, started);
    server.join().expect("server")?;
    Ok(timing)
}

fn sync_writes(count: u64, dir: &std::path::Path) -> anyhow::Result<Timing> {
    let path = dir.join(format!("propmon-bench-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(&path)
        .with_context(|| format!("opening {} with O_DIRECT (not tmpfs?)", path.display()))?;
    let layout = std::alloc::Layout::from_size_align(4096, 4096)?;
    // SAFETY: non-zero size; freed below.
    let buffer = unsafe { std::alloc::alloc_zeroed(layout) };
    // SAFETY: 4096 initialised bytes.
    let block = unsafe { std::slice::from_raw_parts(buffer, 4096) };
    let started = Instant::now();
    let result = (0..count).try_for_each(|_| file.write_all(block));
    let timing = timed(count, started);
    // SAFETY: allocated above with `layout`.
    unsafe { std::alloc::dealloc(buffer, layout) };
    let _ = std::fs::remove_file(&path);
    result?;
    Ok(timing)
}

fn spawn(count: u64) -> anyhow::Result<Timing> {
    let started = Instant::now();
    for _ in 0..count {
        let status = Command::new("/bin/true").status()?;
        if !status.success() {
            bail!("/bin/true failed");
        }
    }
    Ok(timed(count, started))
}

/// Each child burns, writes `bytes` to its own file and removes it; the
/// root (a subreaper) reaps everything and reads the kernel's accounting.
fn storm(
    count: u64,
    work: Duration,
    bytes: usize,
    dir: &std::path::Path,
) -> anyhow::Result<Timing> {
    become_subreaper()?;
    let started = Instant::now();
    for index in 0..count {
        let path = dir.join(format!("propmon-storm-{}-{index}", std::process::id()));
        spawn_child(move || {
            burn(work);
            if let Ok(mut file) = std::fs::File::create(&path) {
                let _ = file.write_all(&vec![5u8; bytes]);
                let _ = file.sync_all();
            }
            let _ = std::fs::remove_file(&path);
        })?;
        if (index + 1).is_multiple_of(4) {
            reap_all()?; // a few alive at a time
        }
    }
    reap_all()?;
    let mut timing = timed(count, started);
    timing.truth_cpu_ns =
        Some(rusage_cpu_ns(UsageWho::RUSAGE_SELF)? + rusage_cpu_ns(UsageWho::RUSAGE_CHILDREN)?);
    let io = std::fs::read_to_string("/proc/self/io")?;
    timing.truth_write_bytes = io
        .lines()
        .find_map(|line| line.strip_prefix("write_bytes:")?.trim().parse().ok());
    Ok(timing)
}
