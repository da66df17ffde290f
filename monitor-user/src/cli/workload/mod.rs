//! `propmon workload`: workloads whose ground truth is known, for the demo
//! and the kernel tests.
//!
//! Process-tree workloads make their root a child subreaper that reaps every
//! descendant, so that what the kernel accounts for the root at the end
//! (getrusage of self and children, `/proc/self/io`) covers the whole tree,
//! exits included. They fork only while single-threaded, so children may do
//! anything. Ground truth is written as JSON with `--report FILE`.

mod bench;
mod cpu;
mod disk;
mod net;

use std::{
    hint::black_box,
    io::Read as _,
    os::fd::OwnedFd,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    errno::Errno,
    sys::{
        prctl,
        resource::{UsageWho, getrusage},
        wait::waitpid,
    },
    unistd::{ForkResult, fork},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{WorkloadArgs, WorkloadKind};

pub fn run(args: WorkloadArgs) -> anyhow::Result<ExitCode> {
    match args.kind {
        WorkloadKind::Demo => cpu::demo()?,
        WorkloadKind::CpuTree {
            burn_ms,
            storm,
            storm_burn_ms,
            report,
        } => {
            let shape = cpu::TreeShape {
                burn: Duration::from_millis(burn_ms),
                storm,
                storm_burn: Duration::from_millis(storm_burn_ms),
            };
            write_report(report.as_deref(), &cpu::cpu_tree(&shape)?)?;
        }
        WorkloadKind::Busy { seconds } => burn(Duration::from_secs_f64(seconds)),
        WorkloadKind::Threads {
            threads,
            before_ms,
            after_ms,
            wait,
            report,
        } => {
            let shape = cpu::ThreadsShape {
                threads: threads.clamp(1, 64),
                before: Duration::from_millis(before_ms.min(60_000)),
                after: Duration::from_millis(after_ms.min(60_000)),
                wait,
            };
            write_report(report.as_deref(), &cpu::threads(&shape)?)?;
        }
        WorkloadKind::Storm { count, linger } => {
            for _ in 0..count {
                spawn_child(|| {})?;
                reap_one()?;
            }
            std::thread::sleep(Duration::from_secs_f64(linger));
        }
        WorkloadKind::Net {
            peer4,
            peer6,
            report,
        } => write_report(report.as_deref(), &net::net(peer4, peer6)?)?,
        WorkloadKind::NetPeer { port } => net::peer(port)?,
        WorkloadKind::Peers {
            tcp,
            udp,
            short,
            udp_fanout,
            bytes,
            report,
        } => {
            let bytes = bytes.min(1 << 30);
            let short = short.min(100_000);
            let mut tallies = net::peers(&tcp, udp, short, bytes)?;
            tallies.extend(net::udp_fanout(udp_fanout.min(4096))?);
            write_report(report.as_deref(), &tallies)?;
        }
        WorkloadKind::Bench { load, report } => {
            write_report(report.as_deref(), &bench::run(load)?)?;
        }
        WorkloadKind::Runtime {
            module: _,
            burn_ms,
            bytes,
            report,
        } => write_report(
            report.as_deref(),
            &net::runtime(Duration::from_millis(burn_ms), bytes)?,
        )?,
        WorkloadKind::NetHammer {
            threads,
            processes,
            sends,
            size,
            report,
        } => write_report(
            report.as_deref(),
            &net::hammer(threads, processes, sends, size)?,
        )?,
        WorkloadKind::Io {
            file,
            mib,
            hold,
            report,
        } => {
            let truth = disk::write_and_hold(&file, mib, Duration::from_secs_f64(hold))?;
            write_report(report.as_deref(), &truth)?;
        }
        WorkloadKind::Disk { dir, report } => {
            let truth = disk::disk(&dir, report.as_deref())?;
            if report.is_none() {
                write_report(None, &truth)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_report(path: Option<&Path>, truth: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string(truth)?;
    match path {
        Some(path) => {
            std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
        }
        None => {
            eprintln!("{json}");
            Ok(())
        }
    }
}

/// Makes this process the reaper of all its orphaned descendants.
fn become_subreaper() -> anyhow::Result<()> {
    prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")
}

/// Forks a child that runs `work` and exits.
fn spawn_child(work: impl FnOnce()) -> anyhow::Result<()> {
    // SAFETY: callers fork only while single-threaded (see the module doc).
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { .. } => Ok(()),
        ForkResult::Child => {
            work();
            // SAFETY: leaves without running the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
    }
}

/// A forked child's result, sent back through a pipe (not a socket, so
/// that reporting moves no network bytes).
struct ChildResult {
    pipe: OwnedFd,
}

impl ChildResult {
    fn spawn<T: Serialize>(work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<Self> {
        let (read_end, write_end) = nix::unistd::pipe().context("pipe")?;
        // The parent drops the write end with the closure, so reading meets
        // EOF once the child has exited.
        spawn_child(move || {
            let line = match work() {
                Ok(value) => serde_json::to_string(&value).unwrap_or_default(),
                Err(err) => {
                    eprintln!("workload child failed: {err:#}");
                    String::new()
                }
            };
            let _ = nix::unistd::write(&write_end, line.as_bytes());
        })?;
        Ok(ChildResult { pipe: read_end })
    }

    /// Blocks until the child has written its result and exited.
    fn wait<T: DeserializeOwned>(self) -> anyhow::Result<T> {
        let mut json = String::new();
        std::fs::File::from(self.pipe)
            .read_to_string(&mut json)
            .context("reading a child's result")?;
        serde_json::from_str(&json).context("a workload child failed")
    }
}

fn reap_one() -> anyhow::Result<()> {
    waitpid(None, None).context("waitpid")?;
    Ok(())
}

/// Reaps every child and every orphan re-parented to us.
fn reap_all() -> anyhow::Result<()> {
    loop {
        match waitpid(None, None) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => return Ok(()),
            Err(err) => return Err(err).context("waitpid"),
        }
    }
}

/// CPU time of this process (`RUSAGE_SELF`) or of its reaped descendants
/// (`RUSAGE_CHILDREN`), user + system, in ns.
fn rusage_cpu_ns(who: UsageWho) -> anyhow::Result<u64> {
    let usage = getrusage(who).context("getrusage")?;
    let micros = |tv: nix::sys::time::TimeVal| tv.tv_sec() as u64 * 1_000_000 + tv.tv_usec() as u64;
    Ok((micros(usage.user_time()) + micros(usage.system_time())) * 1000)
}

/// Keeps one core busy for `duration` of wall-clock time.
fn burn(duration: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < duration {
        for i in 0..10_000u64 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    black_box(x);
}
