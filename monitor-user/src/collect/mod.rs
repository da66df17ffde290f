//! Where the figures come from, behind one [`Backend`] interface:
//!
//! - `ebpf` (Linux): counters kept in the kernel per task; membership
//!   decided in the kernel at thread creation.
//! - `sysinfo` (any OS): the fallback; polls the process table, so it sees
//!   only processes alive at a sample, and no per-task network bytes.
//! - `procfs` (Linux): host figures and the sysinfo backend's descriptors.
//! - `cgroup`: cgroups (v2) that define a task, and their memory figures.

pub mod cgroup;
#[cfg(target_os = "linux")]
pub mod ebpf;
#[cfg(target_os = "linux")]
pub mod procfs;
pub mod sysinfo;

use monitor_common::{KernelStats, NET_BUCKETS, NetBucket};

use crate::{message::Source, profiles::MonitoringProfile};

/// A source of per-task figures.
pub trait Backend: Send {
    fn source(&self) -> Source;

    /// Readies `slot` for a new task with this profile (counters zeroed).
    fn prepare(
        &mut self,
        slot: u32,
        profile: &MonitoringProfile,
        role: SlotRole,
    ) -> anyhow::Result<()>;

    /// Starts `command` as the root process of the task in `slot`.
    fn spawn(
        &mut self,
        slot: u32,
        command: &mut tokio::process::Command,
    ) -> Result<tokio::process::Child, SpawnError>;

    /// Makes the running process `pid`, its threads and all its descendants
    /// the task in `slot`, and everything they create from now on. A
    /// process that belongs to another task fails with [`AlreadyMember`].
    fn attach(&mut self, slot: u32, pid: u32) -> anyhow::Result<()>;

    /// Makes the processes in `cgroup` and below it the task in `slot`
    /// (prepared with [`SlotRole::Cgroup`]), and every process that moves
    /// in later; a member moved out leaves. A cgroup that defines another
    /// task fails with [`CgroupTaken`].
    fn attach_cgroup(&mut self, _slot: u32, _cgroup: &cgroup::Cgroup) -> anyhow::Result<()> {
        anyhow::bail!(
            "--attach-cgroup needs the eBPF backend (the kernel follows processes into and out \
             of the cgroup): run as root with --backend ebpf"
        )
    }

    /// Brings the backend's view up to date; called once per round.
    fn refresh(&mut self);

    /// Takes one sample of every task: afterwards `totals` and `processes`
    /// give the figures of this moment. Called once per round that has a
    /// task due, whatever the number of tasks.
    fn sample(&mut self) -> anyhow::Result<()>;

    /// Cumulative figures of a task, as of the last `sample`.
    fn totals(&mut self, slot: u32) -> anyhow::Result<TaskTotals>;

    /// Memory, threads, descriptors and live processes of a task, as of
    /// the last `sample`.
    fn processes(&mut self, slot: u32) -> ProcessSample;

    /// The remote endpoints of a task's sockets, as of the last `sample`,
    /// when the backend tells them apart; their bytes and the task's
    /// unlisted ones (`TaskTotals::net` minus the peers') add up to the
    /// task's totals.
    fn peers(&mut self, _slot: u32) -> Vec<PeerTotals> {
        Vec::new()
    }

    /// Turns exec discovery on (Propeller mode); with `require_lineage`,
    /// only descendants of the proplet process can be a task's root.
    fn enable_discovery(&mut self, _require_lineage: bool) -> anyhow::Result<()> {
        Ok(())
    }

    /// Looks for the process that execs `proplet_<task_id>.wasm` and makes
    /// it the root of the task in `slot` (Propeller's host runtime).
    fn discover(&mut self, slot: u32, task_id: &str) -> anyhow::Result<()>;

    /// Stops looking for a task's process.
    fn forget_discovery(&mut self, task_id: &str);

    /// Gives the kernel a slot for a module that execs before its task's
    /// start message (reported in [`BackendEvents::provisional`]).
    fn add_provisional_slot(&mut self, _slot: u32) -> anyhow::Result<()> {
        anyhow::bail!("this backend has no provisional roots")
    }

    /// Forgets that `task_id` has a provisional root (claimed or expired).
    fn end_provisional(&mut self, _task_id: &str) {}

    /// What happened since the last call.
    fn events(&mut self) -> BackendEvents;

    /// A file descriptor that becomes readable when [`Backend::events`]
    /// has something, if the backend has one.
    fn event_fd(&self) -> Option<i32> {
        None
    }

    /// Forgets a task whose final message was sent: its processes are no
    /// longer charged to anyone.
    fn release(&mut self, slot: u32);

    /// Some task's processes all exited and it waits for their threads'
    /// release: have the kernel run its pending releases now.
    fn hasten_releases(&mut self) {}

    /// The kernel side's health counters (losses so far, since its maps
    /// were made), if the backend has a kernel side.
    fn kernel_stats(&self) -> Option<KernelStats> {
        None
    }

    /// The kernel side's programs and how full its bounded maps are, if
    /// the backend has a kernel side (for `/metrics`; cheap, every round).
    fn kernel_usage(&self) -> Option<KernelUsage> {
        None
    }

    /// Whether the backend took up the kernel state a previous agent left.
    fn resumed(&self) -> bool {
        false
    }

    /// Whether the tasks go on being counted when the agent stops (kernel
    /// state kept for the next agent).
    fn keeps_state(&self) -> bool {
        false
    }

    /// The generation of `slot` if the kernel still holds a task there
    /// (state kept across agent restarts).
    fn live_generation(&self, _slot: u32) -> Option<u32> {
        None
    }

    /// Takes `slot` back into use after an agent restart.
    fn adopt_slot(&mut self, _slot: u32) {}

    /// Slots a previous agent left in the kernel's provisional pool.
    fn drain_provisional_pool(&mut self) -> Vec<u32> {
        Vec::new()
    }

    /// Words kept with a slot's kernel state, across agent restarts.
    fn user_words(&self, _slot: u32) -> [u64; USER_WORDS] {
        [0; USER_WORDS]
    }

    fn set_user_words(&mut self, _slot: u32, _words: [u64; USER_WORDS]) {}
}

/// Words of [`Backend::user_words`].
pub const USER_WORDS: usize = 3;

/// What the kernel side holds for the agent, for its health series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelUsage {
    /// Programs of the object in the kernel: loaded by the agent, or kept
    /// loaded for it by a previous agent's pinned links.
    pub programs_loaded: u32,
    /// Of those, the ones attached to their hook (an optional hook that
    /// could not attach is loaded, not attached, and its figures missing).
    pub programs_attached: u32,
    /// The bounded maps, each with the entries in use.
    pub maps: Vec<MapUsage>,
}

/// How full one bounded kernel map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapUsage {
    /// The name `/metrics` gives it (`map` label).
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

/// What a slot is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotRole {
    /// A task: its profile says what is collected.
    Task,
    /// The proplet process (in-process tasks are reported through it):
    /// its members leave it when they exec a task's module.
    Proplet,
    /// A module process whose task has not been announced yet.
    Provisional,
    /// A task defined by a cgroup: its profile says what is collected,
    /// and members moved out of the cgroup leave it.
    Cgroup,
}

/// A process that belongs to another task cannot be attached.
#[derive(Debug, thiserror::Error)]
#[error("PID {pid} already belongs to another task (a process belongs to one task)")]
pub struct AlreadyMember {
    pub pid: u32,
    /// The slot of the task it belongs to.
    pub slot: u32,
}

/// A cgroup that defines another task cannot define a second one.
#[derive(Debug, thiserror::Error)]
#[error("the cgroup already defines another task")]
pub struct CgroupTaken {
    /// The slot of that task.
    pub slot: u32,
}

/// Task-level happenings a backend reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendEvents {
    /// Slots whose processes may all have exited.
    pub maybe_ended: Vec<u32>,
    /// Slots whose root process was found by `discover`.
    pub discovered: Vec<u32>,
    /// Task ids whose module exec'd before anyone asked, and the
    /// provisional slot that counts it.
    pub provisional: Vec<(String, u32)>,
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
                details: match (now.details, then.details) {
                    (Some(n), Some(t)) => Some(DiskDetails {
                        cancelled_write_bytes: n
                            .cancelled_write_bytes
                            .saturating_sub(t.cancelled_write_bytes),
                        rchar: n.rchar.saturating_sub(t.rchar),
                        wchar: n.wchar.saturating_sub(t.wchar),
                        syscr: n.syscr.saturating_sub(t.syscr),
                        syscw: n.syscw.saturating_sub(t.syscw),
                    }),
                    (details, _) => details,
                },
            }),
            (disk, _) => disk,
        };
        let net = match (self.net, baseline.net) {
            (Some(now), Some(then)) => Some(NetTotals {
                tx: std::array::from_fn(|b| now.tx[b].saturating_sub(then.tx[b])),
                rx: std::array::from_fn(|b| now.rx[b].saturating_sub(then.rx[b])),
                tcp: match (now.tcp, then.tcp) {
                    (Some(n), Some(t)) => Some(TcpHealth {
                        retransmits: n.retransmits.saturating_sub(t.retransmits),
                        failed_connections: n
                            .failed_connections
                            .saturating_sub(t.failed_connections),
                        resets_received: n.resets_received.saturating_sub(t.resets_received),
                    }),
                    (tcp, _) => tcp,
                },
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskTotals {
    /// `read_bytes`: bytes the task caused to be read from devices.
    pub read_bytes: u64,
    /// `write_bytes`: page-cache bytes dirtied plus direct-I/O writes.
    pub write_bytes: u64,
    /// The other `/proc/<pid>/io` figures, when the backend has them.
    pub details: Option<DiskDetails>,
}

/// The rest of `/proc/<pid>/io`, summed over the task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskDetails {
    /// Dirty page-cache bytes truncated before writeback.
    pub cancelled_write_bytes: u64,
    /// Bytes passed to read-like system calls (page cache hits included).
    pub rchar: u64,
    /// Bytes passed to write-like system calls.
    pub wchar: u64,
    /// Read-like system calls.
    pub syscr: u64,
    /// Write-like system calls.
    pub syscw: u64,
}

/// Socket payload bytes of a task, indexed by [`NetBucket`], and how TCP
/// fared when the backend counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetTotals {
    pub tx: [u64; NET_BUCKETS],
    pub rx: [u64; NET_BUCKETS],
    #[serde(default)]
    pub tcp: Option<TcpHealth>,
}

/// TCP's health over a task's connections (cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcpHealth {
    pub retransmits: u64,
    pub failed_connections: u64,
    pub resets_received: u64,
}

/// Who a [`PeerTotals`] is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerId {
    /// A remote address and port.
    Endpoint(std::net::SocketAddr),
    /// Sockets without a single peer (unconnected UDP).
    #[default]
    Unconnected,
    /// Peers the kernel had no room to list.
    Unlisted,
}

/// One remote endpoint of a task's sockets (cumulative figures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerTotals {
    pub peer: PeerId,
    /// IPPROTO_*.
    pub protocol: u16,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub retransmits: u64,
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

/// How to open a backend.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// eBPF: keep the kernel state pinned under this name across agent
    /// restarts, and resume from it.
    pub keep_kernel_state: Option<String>,
}

/// Opens the chosen backend; `auto` falls back to sysinfo with one line
/// saying why eBPF is not used.
pub fn open(choice: BackendChoice, options: &Options) -> anyhow::Result<Box<dyn Backend>> {
    match choice {
        BackendChoice::Sysinfo => Ok(Box::new(sysinfo::SysinfoBackend::new()?)),
        BackendChoice::Ebpf => open_ebpf(options).map_err(|why| anyhow::anyhow!("{why}")),
        BackendChoice::Auto => match open_ebpf(options) {
            Ok(backend) => Ok(backend),
            Err(why) => {
                tracing::warn!("{why}; using the sysinfo backend (no per-task network figures)");
                Ok(Box::new(sysinfo::SysinfoBackend::new()?))
            }
        },
    }
}

#[cfg(target_os = "linux")]
fn open_ebpf(options: &Options) -> Result<Box<dyn Backend>, String> {
    let options = ebpf::LoadOptions {
        pins: options.keep_kernel_state.clone(),
    };
    ebpf::EbpfBackend::load(&options)
        .map(|backend| Box::new(backend) as Box<dyn Backend>)
        .map_err(|err| err.to_string())
}

#[cfg(not(target_os = "linux"))]
fn open_ebpf(_options: &Options) -> Result<Box<dyn Backend>, String> {
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
