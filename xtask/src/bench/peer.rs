//! The peer column: the bpftrace one-liners people use today for the
//! figures propmon reports, run like an agent beside the load: started and
//! attached before it, stopped with SIGINT after it.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::Value;

use super::bpf::{HeldPrograms, Programs};

/// Per-PID CPU time: the scheduler's runtime updates, summed.
const CPU: &str = "tracepoint:sched:sched_stat_runtime { @[pid] = sum(args->runtime); }";
/// Per-PID socket payload bytes.
const NETWORK: &str = "tracepoint:sock:sock_send_length { @tx[pid] = sum(args->ret); } \
                       tracepoint:sock:sock_recv_length { @rx[pid] = sum(args->ret); }";

/// Nothing at all on the same three tracepoints: what having any program
/// there costs, the floor under every per-event figure (the run-time
/// statistics' own clock reads included).
const EMPTY: &str = "tracepoint:sched:sched_stat_runtime { } \
                     tracepoint:sock:sock_send_length { } \
                     tracepoint:sock:sock_recv_length { }";

/// Which one-liners one bpftrace process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Peer {
    Cpu,
    Network,
    /// Both in one process: what compares with propmon's intensive profile.
    CpuNetwork,
    /// Empty programs on the tracepoints of both.
    Empty,
}

impl Peer {
    pub fn key(self) -> &'static str {
        match self {
            Peer::Cpu => "bpftrace-cpu",
            Peer::Network => "bpftrace-network",
            Peer::CpuNetwork => "bpftrace-cpu-network",
            Peer::Empty => "bpftrace-empty",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Peer::Cpu => "bpftrace CPU",
            Peer::Network => "bpftrace network",
            Peer::CpuNetwork => "bpftrace (CPU + network)",
            Peer::Empty => "empty programs (bpftrace)",
        }
    }

    fn script(self) -> String {
        match self {
            Peer::Cpu => CPU.to_owned(),
            Peer::Network => NETWORK.to_owned(),
            Peer::CpuNetwork => format!("{CPU} {NETWORK}"),
            Peer::Empty => EMPTY.to_owned(),
        }
    }

    fn probes(self) -> usize {
        match self {
            Peer::Cpu => 1,
            Peer::Network => 2,
            Peer::CpuNetwork | Peer::Empty => 3,
        }
    }
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// bpftrace 0.17 attaches `tracepoint:` probes through tracefs, which
/// these machines do not mount at boot. Mounts it unless it is there.
pub fn ensure_tracefs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(TRACEFS) && fields.next() == Some("tracefs")
    });
    if mounted {
        return Ok(());
    }
    eprintln!("bench: mounting tracefs at {TRACEFS} for bpftrace");
    let status = Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .status()
        .context("running mount")?;
    if !status.success() {
        bail!("mount -t tracefs nodev {TRACEFS} failed ({status})");
    }
    Ok(())
}

/// A running bpftrace, attached; killed if dropped before [`Bpftrace::stop`].
pub struct Bpftrace {
    child: Child,
    programs: HeldPrograms,
    output: PathBuf,
}

impl Bpftrace {
    /// How long bpftrace may take to compile and attach.
    const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
    /// SIGINTs sent, a second apart, before giving up on a clean stop.
    const STOP_ATTEMPTS: u32 = 10;

    /// Starts bpftrace with `peer`'s one-liners, its output to `output`
    /// (the maps it prints at exit are not needed), and returns once every
    /// probe is attached.
    pub fn start(peer: Peer, output: &Path) -> anyhow::Result<Self> {
        let log = File::create(output).with_context(|| format!("creating {}", output.display()))?;
        let child = Command::new("bpftrace")
            .arg("-e")
            .arg(peer.script())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting bpftrace (cargo xtask setup installs it)")?;
        let mut started = StartingBpftrace {
            child: Some(child),
            output,
        };
        let ids = started.wait_attached(peer.probes())?;
        let child = started.child.take().expect("child kept until attached");
        let tracer = Bpftrace {
            child,
            programs: HeldPrograms::hold(ids)?,
            output: output.to_owned(),
        };
        Ok(tracer)
    }

    /// Its programs' counters now, by tracepoint.
    pub fn counters(&self) -> Programs {
        self.programs.counters()
    }

    /// SIGINT (bpftrace's normal stop), then waits for it to print its
    /// maps and exit. bpftrace 0.17 can miss a SIGINT that comes while it
    /// is not yet waiting for events (seen here: it then waits forever),
    /// so the signal is repeated until it exits.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id() as libc::pid_t;
        for _ in 0..Self::STOP_ATTEMPTS {
            // SAFETY: plain kill(2) of our own child, which is not reaped yet.
            unsafe { libc::kill(pid, libc::SIGINT) };
            if let Some(status) = self.wait_for_exit(Duration::from_secs(1))? {
                if !status.success() {
                    bail!("bpftrace failed ({status}): {}", self.output_text());
                }
                let _ = std::fs::remove_file(&self.output);
                return Ok(());
            }
        }
        bail!(
            "bpftrace did not stop on SIGINT within {} s (killed)",
            Self::STOP_ATTEMPTS
        )
    }

    fn wait_for_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().context("waiting for bpftrace")? {
                return Ok(Some(status));
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(None)
    }

    fn output_text(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A bpftrace not yet attached; killed if dropped.
struct StartingBpftrace<'a> {
    child: Option<Child>,
    output: &'a Path,
}

impl StartingBpftrace<'_> {
    /// Waits until `probes` probes are attached: bpftrace prints
    /// "Attaching N probes..." as it starts attaching, and bpftool lists
    /// a probe under `perf show` once its program is on the tracepoint.
    /// Returns the programs' ids and tracepoints.
    fn wait_attached(&mut self, probes: usize) -> anyhow::Result<Vec<(u64, String)>> {
        let deadline = Instant::now() + Bpftrace::ATTACH_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("child kept until attached");
            let pid = child.id();
            if let Some(status) = child.try_wait()? {
                bail!("bpftrace exited ({status}): {}", self.output_text());
            }
            if self.output_text().contains("Attaching") {
                let attached = attached_probes(pid);
                if attached.len() >= probes {
                    return Ok(attached);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "bpftrace did not attach {probes} probes within {:?}: {}",
                    Bpftrace::ATTACH_TIMEOUT,
                    self.output_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn output_text(&self) -> String {
        std::fs::read_to_string(self.output).unwrap_or_default()
    }
}

impl Drop for StartingBpftrace<'_> {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The tracepoint programs `pid` has attached (`bpftool perf show`):
/// program id and tracepoint.
fn attached_probes(pid: u32) -> Vec<(u64, String)> {
    let Ok(output) = Command::new("bpftool")
        .args(["-j", "perf", "show"])
        .output()
    else {
        return Vec::new();
    };
    let links: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
    links
        .iter()
        .filter(|link| link["pid"].as_u64() == Some(u64::from(pid)))
        .filter_map(|link| {
            Some((
                link["prog_id"].as_u64()?,
                link["tracepoint"].as_str()?.to_owned(),
            ))
        })
        .collect()
}
