//! Where the figures come from, behind one [`Backend`] interface:
//!
//! - `ebpf` (Linux): counters kept in the kernel per task; membership
//!   decided in the kernel at thread creation.
//! - `sysinfo` (any OS): the fallback; polls the process table, so it sees
//!   only processes alive at a sample, and no per-task network bytes.
//! - `procfs` (Linux): memory, threads and descriptors of live processes.

#[cfg(target_os = "linux")]
pub mod ebpf;
#[cfg(target_os = "linux")]
pub mod procfs;
pub mod sysinfo;

use std::collections::HashMap;

use monitor_common::{NET_BUCKETS, NetBucket};

use crate::{message::Source, profiles::MonitoringProfile};

/// A source of per-task figures.
pub trait Backend: Send {
    fn source(&self) -> Source;

    /// Readies `slot` for a new task with this profile (counters zeroed).
    fn prepare(&mut self, slot: u32, profile: &MonitoringProfile) -> anyhow::Result<()>;

    /// Starts `command` as the root process of the task in `slot`.
    fn spawn(
        &mut self,
        slot: u32,
        command: &mut tokio::process::Command,
    ) -> Result<tokio::process::Child, SpawnError>;

    /// Makes the running process `pid`, its threads and all its descendants
    /// the task in `slot`, and everything they create from now on.
    fn attach(&mut self, slot: u32, pid: u32) -> anyhow::Result<()>;

    /// Brings the backend's view up to date; called once per round,
    /// before any `totals` or `processes` of that round.
    fn refresh(&mut self);

    /// Cumulative figures of a task.
    fn totals(&mut self, slot: u32) -> anyhow::Result<TaskTotals>;

    /// Live processes of every task, by slot.
    fn processes(&mut self) -> HashMap<u32, Vec<u32>>;

    /// Memory, threads and descriptors summed over `pids`.
    fn sample_processes(&mut self, pids: &[u32]) -> ProcessSample;

    /// Looks for the process that execs with `proplet_<task_id>.wasm` in
    /// its argv, and makes it the root of the task in `slot` (Propeller's
    /// host runtime).
    fn discover(&mut self, slot: u32, task_id: &str) -> anyhow::Result<()>;

    /// Stops looking for a task's process.
    fn forget_discovery(&mut self, task_id: &str);

    /// What happened since the last call.
    fn events(&mut self) -> BackendEvents;

    /// Forgets a task whose final message was sent.
    fn release(&mut self, slot: u32);

    /// New losses (records the kernel could not make), as a log line.
    fn new_losses(&mut self) -> Option<String>;
}

/// Task-level happenings a backend reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendEvents {
    /// Slots whose processes may all have exited.
    pub maybe_ended: Vec<u32>,
    /// Slots whose root process was found by `discover`.
    pub discovered: Vec<u32>,
}

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot run {program}: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl SpawnError {
    /// The exit status a shell would give: 127 not found, 126 not runnable.
    pub fn exit_code(&self) -> u8 {
        match self {
            SpawnError::Exec { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 127,
            SpawnError::Exec { .. } => 126,
            SpawnError::Internal(_) => 125,
        }
    }
}

/// Cumulative figures of one task. `None`: the backend cannot know it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskTotals {
    /// On-CPU ns of every thread that ever belonged to the task (that the
    /// backend saw).
    pub cpu_ns: u64,
    /// Processes that have not exited.
    pub live_processes: u64,
    /// Threads that may still run; 0 once the task is completely gone.
    pub live_threads: u64,
    /// Processes that ever joined the task.
    pub processes_started: Option<u64>,
    pub disk: Option<DiskTotals>,
    pub net: Option<NetTotals>,
}

impl TaskTotals {
    /// What was counted since `baseline` (cumulative figures only; live
    /// counts are kept as they are).
    pub fn since(&self, baseline: &TaskTotals) -> TaskTotals {
        let disk = match (self.disk, baseline.disk) {
            (Some(now), Some(then)) => Some(DiskTotals {
                read_bytes: now.read_bytes.saturating_sub(then.read_bytes),
                write_bytes: now.write_bytes.saturating_sub(then.write_bytes),
                breakdown: match (now.breakdown, then.breakdown) {
                    (Some(n), Some(t)) => Some(DiskBreakdown {
                        dirtied_bytes: n.dirtied_bytes.saturating_sub(t.dirtied_bytes),
                        direct_write_bytes: n
                            .direct_write_bytes
                            .saturating_sub(t.direct_write_bytes),
                        submitted_write_bytes: n
                            .submitted_write_bytes
                            .saturating_sub(t.submitted_write_bytes),
                        cancelled_write_bytes: n
                            .cancelled_write_bytes
                            .saturating_sub(t.cancelled_write_bytes),
                    }),
                    (breakdown, _) => breakdown,
                },
            }),
            (disk, _) => disk,
        };
        let net = match (self.net, baseline.net) {
            (Some(now), Some(then)) => Some(NetTotals {
                tx: std::array::from_fn(|b| now.tx[b].saturating_sub(then.tx[b])),
                rx: std::array::from_fn(|b| now.rx[b].saturating_sub(then.rx[b])),
            }),
            (net, _) => net,
        };
        TaskTotals {
            cpu_ns: self.cpu_ns.saturating_sub(baseline.cpu_ns),
            processes_started: match (self.processes_started, baseline.processes_started) {
                (Some(now), Some(then)) => Some(now.saturating_sub(then)),
                (now, _) => now,
            },
            disk,
            net,
            ..*self
        }
    }
}

/// Disk bytes of a task, with `/proc/<pid>/io` semantics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskTotals {
    /// `read_bytes`: bytes the task asked devices to read.
    pub read_bytes: u64,
    /// `write_bytes`: page-cache bytes dirtied plus direct-I/O writes.
    pub write_bytes: u64,
    /// Where the bytes come from, when the backend can tell.
    pub breakdown: Option<DiskBreakdown>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskBreakdown {
    /// Page-cache bytes dirtied (part of `write_bytes`).
    pub dirtied_bytes: u64,
    /// Direct-I/O write bios submitted (the rest of `write_bytes`).
    pub direct_write_bytes: u64,
    /// Every write bio submitted in the task's own context.
    pub submitted_write_bytes: u64,
    /// Dirty bytes truncated before writeback (`cancelled_write_bytes`).
    pub cancelled_write_bytes: u64,
}

/// Socket payload bytes of a task, indexed by [`NetBucket`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetTotals {
    pub tx: [u64; NET_BUCKETS],
    pub rx: [u64; NET_BUCKETS],
}

impl NetTotals {
    /// `(received, sent)` bytes of one bucket.
    pub fn bucket(&self, bucket: NetBucket) -> (u64, u64) {
        (self.rx[bucket as usize], self.tx[bucket as usize])
    }

    /// Bytes sent over AF_INET/AF_INET6 sockets (AF_UNIX excluded).
    pub fn inet_tx(&self) -> u64 {
        INET_BUCKETS.iter().map(|&b| self.tx[b as usize]).sum()
    }

    /// Bytes received over AF_INET/AF_INET6 sockets (AF_UNIX excluded).
    pub fn inet_rx(&self) -> u64 {
        INET_BUCKETS.iter().map(|&b| self.rx[b as usize]).sum()
    }
}

const INET_BUCKETS: [NetBucket; 3] = [NetBucket::Tcp, NetBucket::Udp, NetBucket::Other];

/// Point-in-time figures summed over a task's live processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessSample {
    pub memory_bytes: u64,
    /// `None` where the OS does not say.
    pub threads: Option<u64>,
    pub file_descriptors: Option<u64>,
    /// Processes that could be read (some may exit while we read).
    pub processes: u64,
}

/// Which backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// eBPF where it loads, else sysinfo (saying why).
    Auto,
    Ebpf,
    Sysinfo,
}

/// Opens the chosen backend; `auto` falls back to sysinfo with one line
/// saying why eBPF is not used.
pub fn open(choice: BackendChoice) -> anyhow::Result<Box<dyn Backend>> {
    match choice {
        BackendChoice::Sysinfo => Ok(Box::new(sysinfo::SysinfoBackend::new()?)),
        BackendChoice::Ebpf => open_ebpf().map_err(|why| anyhow::anyhow!("{why}")),
        BackendChoice::Auto => match open_ebpf() {
            Ok(backend) => Ok(backend),
            Err(why) => {
                tracing::warn!("{why}; using the sysinfo backend (no per-task network figures)");
                Ok(Box::new(sysinfo::SysinfoBackend::new()?))
            }
        },
    }
}

#[cfg(target_os = "linux")]
fn open_ebpf() -> Result<Box<dyn Backend>, String> {
    ebpf::EbpfBackend::load()
        .map(|backend| Box::new(backend) as Box<dyn Backend>)
        .map_err(|err| err.to_string())
}

#[cfg(not(target_os = "linux"))]
fn open_ebpf() -> Result<Box<dyn Backend>, String> {
    Err("eBPF unavailable: it needs Linux".to_owned())
}

/// The host's RAM in bytes (0 if unknown).
pub fn host_memory_bytes() -> u64 {
    #[cfg(target_os = "linux")]
    {
        procfs::host_memory_bytes()
    }
    #[cfg(not(target_os = "linux"))]
    {
        ::sysinfo::System::new()
            .map(|mut system| {
                system.refresh_memory();
                system.total_memory()
            })
            .unwrap_or(0)
    }
}
