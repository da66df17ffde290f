//! The eBPF backend: loads and attaches the kernel programs, gives threads
//! their task, runs the sampling pass and reads what it counted.
//!
//! Order of work: preflight checks, BTF offsets, load with the offsets as
//! globals (reusing the pinned maps of a previous agent when asked to keep
//! state), attach every hook (or keep the pinned links), attach the
//! sampling iterator, map the shared arrays, read the kernel's log
//! records. Dropping the backend detaches what is not pinned.

pub mod attach;
pub mod btf;
pub mod kernel_log;
mod loader;
pub mod peers;
pub mod pins;
pub mod preflight;
pub mod sys;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    mem::offset_of,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    sync::atomic::Ordering,
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, Queue, RingBuf},
    programs::{BtfTracePoint, FExit, Iter, links::FdLink},
};
use aya_log::EbpfLogger;
use monitor_common::{
    Control, DISCOVERY_ID_BYTES, KernelStats, LAYOUT_GLOBAL, MAX_CGROUP_TASKS, MAX_TASKS,
    NetBucket, SlotRef, TaskConfig, TaskEvent, TaskRecord, ThreadState, collect, maps, slot,
    switch, thread,
};
use tokio::process::{Child, Command};

use self::{
    attach::{AttachError, CgroupAttach, ThreadJoin, TreeAttach},
    kernel_log::KernelLog,
    pins::Pins,
    sys::{IterLink, MappedArray, Poll, TaskStorage, thread_pidfd},
};
use super::{
    Backend, BackendEvents, DiskDetails, DiskTotals, ProcessSample, SlotRole, SpawnError,
    TaskTotals, USER_WORDS, cgroup::Cgroup,
};
use crate::{message::Source, profiles::MonitoringProfile};

/// The kernel object built from `monitor-ebpf` by build.rs.
static PROGRAMS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// Every hook of the object and where it attaches.
const HOOKS: &[Hook] = &[
    Hook::required(Kind::Tracepoint, "task_newtask", "task_newtask"),
    Hook::required(Kind::Tracepoint, "sched_process_exit", "sched_process_exit"),
    Hook::required(Kind::Tracepoint, "sched_process_free", "sched_process_free"),
    Hook::required(Kind::Tracepoint, "sock_send_length", "sock_send_length"),
    Hook::required(Kind::Tracepoint, "sock_recv_length", "sock_recv_length"),
    Hook::on_demand(
        Kind::Tracepoint,
        "exec_discovery",
        "sched_process_exec",
        Need::Discovery,
    ),
    Hook::required(
        Kind::Tracepoint,
        "inet_sock_set_state",
        "inet_sock_set_state",
    ),
    Hook::required(Kind::Tracepoint, "tcp_retransmit_skb", "tcp_retransmit_skb"),
    Hook::required(Kind::Tracepoint, "tcp_receive_reset", "tcp_receive_reset"),
    Hook::on_demand(
        Kind::Tracepoint,
        "cgroup_attach_task",
        "cgroup_attach_task",
        Need::Cgroups,
    ),
    Hook::optional(
        Kind::FExit,
        "tcp_splice_read",
        "tcp_splice_read",
        "bytes spliced out of TCP sockets",
    ),
    Hook::optional(
        Kind::FExit,
        "unix_stream_splice_read",
        "unix_stream_splice_read",
        "bytes spliced out of AF_UNIX stream sockets",
    ),
];

/// The sampling pass (a task iterator).
const SAMPLING_PASS: &str = "sampling_pass";

/// The BTF name of the task iterator, as aya looks it up.
const SAMPLING_PASS_BTF: &str = "bpf_iter_task";

/// The BTF names of every attach point, as aya looks them up.
fn attach_points() -> Vec<(String, btf::AttachKind)> {
    let mut points: Vec<(String, btf::AttachKind)> = HOOKS
        .iter()
        .map(|hook| {
            let kind = match hook.kind {
                Kind::Tracepoint => btf::AttachKind::Typedef,
                Kind::FExit => btf::AttachKind::Func,
            };
            (hook.btf_name(), kind)
        })
        .collect();
    points.push((SAMPLING_PASS_BTF.to_owned(), btf::AttachKind::Func));
    points
}

#[derive(Clone, Copy)]
enum Kind {
    /// A BTF tracepoint (tp_btf).
    Tracepoint,
    /// An fexit program (BPF trampoline).
    FExit,
}

struct Hook {
    kind: Kind,
    program: &'static str,
    /// Tracepoint or kernel function.
    target: &'static str,
    /// What is not counted if the hook cannot attach; `None`: required.
    uncounted_without: Option<&'static str>,
    need: Need,
}

/// When a hook is loaded and attached. A hook that serves one feature
/// only is loaded when that feature is first turned on: until then it
/// would return at once on every event (every exec, every cgroup
/// migration of the host), and the verifier's time on it would delay
/// every start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    Always,
    /// Propeller mode's exec discovery (`switch::DISCOVERY`).
    Discovery,
    /// Tasks defined by cgroups (`switch::CGROUPS`).
    Cgroups,
}

impl Hook {
    /// The type aya finds the attach point's id by.
    fn btf_name(&self) -> String {
        match self.kind {
            Kind::Tracepoint => format!("btf_trace_{}", self.target),
            Kind::FExit => self.target.to_owned(),
        }
    }

    const fn required(kind: Kind, program: &'static str, target: &'static str) -> Self {
        Hook {
            kind,
            program,
            target,
            uncounted_without: None,
            need: Need::Always,
        }
    }

    /// Required, loaded when `need` is first turned on.
    const fn on_demand(
        kind: Kind,
        program: &'static str,
        target: &'static str,
        need: Need,
    ) -> Self {
        Hook {
            need,
            ..Hook::required(kind, program, target)
        }
    }

    const fn optional(
        kind: Kind,
        program: &'static str,
        target: &'static str,
        uncounted: &'static str,
    ) -> Self {
        Hook {
            kind,
            program,
            target,
            uncounted_without: Some(uncounted),
            need: Need::Always,
        }
    }
}

/// Why the eBPF backend is unavailable; the message is one actionable line.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("eBPF unavailable: {0}")]
    Missing(#[from] preflight::Missing),
    #[error("eBPF unavailable: {0:#}")]
    Failed(anyhow::Error),
}

/// How to load.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Keep the kernel state (maps and hooks) pinned in bpffs under this
    /// name, and resume from what a previous agent left there.
    pub pins: Option<String>,
}

pub struct EbpfBackend {
    /// Owns the programs and the links that are not pinned.
    ebpf: Ebpf,
    /// Hooks kept attached in bpffs across agent restarts.
    pinned_links: Vec<aya::programs::links::PinnedLink>,
    /// Where to pin the links of hooks loaded on demand.
    pins: Option<Pins>,
    /// The attach points of hooks loaded on demand.
    attach_points: btf::AttachPoints,
    /// The on-demand needs whose hooks are attached.
    attached_needs: Vec<Need>,
    pass_link: IterLink,
    threads: TaskStorage<ThreadState>,
    config: MappedArray<TaskConfig>,
    records: MappedArray<TaskRecord>,
    control: MappedArray<Control>,
    switches: Array<MapData, u32>,
    discover: HashMap<MapData, [u8; DISCOVERY_ID_BYTES], SlotRef>,
    provisional_pool: Queue<MapData, SlotRef>,
    provisional: HashMap<MapData, [u8; DISCOVERY_ID_BYTES], SlotRef>,
    cgroups: HashMap<MapData, u64, SlotRef>,
    events: RingBuf<MapData>,
    peers: peers::PeerBook,
    /// When every peer row was last looked at.
    peers_rescanned: std::time::Instant,
    /// The kernel's log records, to the agent's log (`None` if aya-log's
    /// map could not be read: the counts still reach the proplet message).
    kernel_log: Option<EbpfLogger<KernelLog>>,
    /// Readable when there are events or log records.
    poll: Poll,
    /// Task ids the kernel is looking for.
    discovering: BTreeMap<String, u32>,
    /// Slots in use, for a full sweep when events were lost.
    active: BTreeSet<u32>,
    /// The cgroup id of each task defined by a cgroup.
    cgroup_slots: BTreeMap<u32, u64>,
    /// Events lost so far, as last seen.
    event_drops: u64,
    /// Whether the kernel state came from a previous agent.
    resumed: bool,
    /// Whether the kernel state is pinned for the next agent.
    pinned: bool,
    releases: ReleaseFlusher,
    programs: Programs,
}

/// The object's programs in the kernel, and attached, for `/metrics`.
#[derive(Clone, Copy, Debug)]
struct Programs {
    loaded: u32,
    attached: u32,
}

impl Programs {
    fn count(&mut self, loaded: bool, attached: bool) {
        self.loaded += u32::from(loaded);
        self.attached += u32::from(attached);
    }
}

/// Whether a program made it into the kernel (an optional hook may load
/// and then fail to attach).
fn is_loaded(ebpf: &Ebpf, name: &str) -> bool {
    ebpf.program(name)
        .is_some_and(|program| program.fd().is_ok())
}

impl EbpfBackend {
    /// Checks privileges, loads and attaches every program.
    pub fn load(options: &LoadOptions) -> Result<Self, Unavailable> {
        preflight::check()?;
        Self::load_checked(options).map_err(Unavailable::Failed)
    }

    fn load_checked(options: &LoadOptions) -> anyhow::Result<Self> {
        raise_memlock_limit();
        fix_mmap_threshold();
        let mut loader = loader::loader_without_kernel_btf();
        release_freed_memory(); // what the fallback loader's parse left
        // The kernel's BTF is dropped here, before the programs are loaded.
        let (layout, attach_points) = {
            let kernel_btf = btf::KernelBtf::load(Path::new(btf::VMLINUX_BTF))?;
            (
                kernel_btf.kernel_layout()?,
                kernel_btf.attach_points(&attach_points())?,
            )
        };
        release_freed_memory();
        let pins = match &options.pins {
            Some(name) => Some(Pins::open(name, PROGRAMS_OBJECT, &layout)?),
            None => None,
        };
        loader.override_global(LAYOUT_GLOBAL, &layout, true);
        // aya 0.14 has no type for task-local storage; we use its fd.
        loader.allow_unsupported_maps();
        if let Some(pins) = &pins {
            for name in maps::PERSISTENT {
                loader.map_pin_path(name, pins.map_path(name));
            }
        }
        let mut ebpf = loader
            .load(PROGRAMS_OBJECT)
            .context("loading the eBPF object (maps and globals)")?;
        let mut pinned_links = Vec::new();
        // The sampling pass, attached below or the load fails.
        let mut programs = Programs {
            loaded: 1,
            attached: 1,
        };
        // A previous agent's on-demand hooks are resumed with its links.
        let mut attached_needs = Vec::new();
        for hook in HOOKS {
            if let Some(link) = pins
                .as_ref()
                .and_then(|pins| pins.existing_link(hook.program))
            {
                pinned_links.push(link);
                programs.count(true, true);
                if hook.need != Need::Always {
                    attached_needs.push(hook.need);
                }
                continue;
            }
            if hook.need != Need::Always {
                continue;
            }
            let attached = attach_counted(
                &mut ebpf,
                hook,
                &attach_points,
                pins.as_ref(),
                &mut programs,
            );
            match (attached, hook.uncounted_without) {
                (Ok(Some(link)), _) => pinned_links.push(link),
                (Ok(None), _) => {}
                (Err(err), None) => return Err(err),
                (Err(err), Some(uncounted)) => {
                    tracing::warn!("{uncounted} are not counted: {err:#}");
                }
            }
        }
        let pass_link = attach_pass(&mut ebpf, &attach_points)?;
        release_freed_memory();
        let threads = TaskStorage::new(sys::map_fd(map_data(&ebpf, maps::THREADS)?)?);
        let config = MappedArray::map(map_data(&ebpf, maps::TASK_CONFIG)?.fd().as_fd(), MAX_TASKS)
            .context("mapping TASK_CONFIG")?;
        let records = MappedArray::map(map_data(&ebpf, maps::TASKS)?.fd().as_fd(), MAX_TASKS)
            .context("mapping TASKS")?;
        let control: MappedArray<Control> =
            MappedArray::map(map_data(&ebpf, maps::CONTROL)?.fd().as_fd(), 1)
                .context("mapping CONTROL")?;
        let event_drops = control.get(0).stats.event_drops;
        let kernel_log = match EbpfLogger::init_with_logger(&mut ebpf, KernelLog) {
            Ok(logger) => Some(logger),
            Err(err) => {
                tracing::warn!(
                    "the kernel programs' log records cannot be read ({err}): their losses are \
                     only counted in the proplet-level message"
                );
                None
            }
        };
        let peers_fd = map_data(&ebpf, maps::PEERS)?
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .context("keeping the PEERS map")?;
        let peer_book = peers::PeerBook::new(
            peers_fd,
            HashMap::try_from(take_map(&mut ebpf, maps::PEER_INDEX)?)?,
            Queue::try_from(take_map(&mut ebpf, maps::FREE_PEER_ROWS)?)?,
        )?;
        let events = RingBuf::try_from(take_map(&mut ebpf, maps::TASK_EVENTS)?)?;
        let poll = Poll::new(
            std::iter::once(events.as_fd()).chain(kernel_log.as_ref().map(|log| log.as_fd())),
        )
        .context("waiting for kernel events (epoll)")?;
        let resumed = pins.as_ref().is_some_and(|pins| pins.resumed());
        let pinned = pins.is_some();
        let mut backend = EbpfBackend {
            peers: peer_book,
            peers_rescanned: std::time::Instant::now(),
            switches: Array::try_from(take_map(&mut ebpf, maps::SWITCHES)?)?,
            discover: HashMap::try_from(take_map(&mut ebpf, maps::DISCOVER)?)?,
            provisional_pool: Queue::try_from(take_map(&mut ebpf, maps::PROVISIONAL_POOL)?)?,
            provisional: HashMap::try_from(take_map(&mut ebpf, maps::PROVISIONAL)?)?,
            cgroups: HashMap::try_from(take_map(&mut ebpf, maps::CGROUPS)?)?,
            events,
            kernel_log,
            poll,
            ebpf,
            pinned_links,
            pins,
            attach_points,
            attached_needs,
            pass_link,
            threads,
            config,
            records,
            control,
            discovering: BTreeMap::new(),
            active: BTreeSet::new(),
            cgroup_slots: BTreeMap::new(),
            event_drops,
            resumed,
            pinned,
            releases: ReleaseFlusher::default(),
            programs,
        };
        backend.keep_live_cgroups()?;
        Ok(backend)
    }

    /// Kernel state left by a previous agent: the cgroups of tasks still
    /// in their slots are kept (the engine takes those tasks up), the
    /// others forgotten.
    fn keep_live_cgroups(&mut self) -> anyhow::Result<()> {
        let entries: Vec<(u64, SlotRef)> = self.cgroups.iter().filter_map(Result::ok).collect();
        for (id, target) in entries {
            if self.live_generation(target.slot) == Some(target.generation) {
                self.cgroup_slots.insert(target.slot, id);
            } else {
                let _ = self.cgroups.remove(&id);
            }
        }
        let any = !self.cgroup_slots.is_empty();
        if any {
            self.attach_needed(Need::Cgroups)?;
        }
        self.set_switch(switch::CGROUPS, any)
    }

    /// Loads and attaches the hooks of `need`, once; before the switch
    /// that turns their work on.
    fn attach_needed(&mut self, need: Need) -> anyhow::Result<()> {
        if self.attached_needs.contains(&need) {
            return Ok(());
        }
        for hook in HOOKS.iter().filter(|hook| hook.need == need) {
            let attached = attach_counted(
                &mut self.ebpf,
                hook,
                &self.attach_points,
                self.pins.as_ref(),
                &mut self.programs,
            );
            if let Some(link) = attached? {
                self.pinned_links.push(link);
            }
        }
        self.attached_needs.push(need);
        Ok(())
    }

    /// Records the kernel could not make, since the maps were created.
    pub fn kernel_stats(&self) -> KernelStats {
        self.control.get(0).stats
    }

    /// The generation and flags of a slot.
    pub fn slot_config(&self, slot: u32) -> TaskConfig {
        self.config.get(slot)
    }

    fn set_config(&self, slot: u32, config: TaskConfig) {
        let word = u64::from(config.generation) | (u64::from(config.flags) << 32);
        self.config.word(slot, 0).store(word, Ordering::SeqCst);
    }

    fn target(&self, slot: u32) -> SlotRef {
        SlotRef {
            slot,
            generation: self.config.get(slot).generation,
        }
    }

    fn set_switch(&mut self, index: u32, on: bool) -> anyhow::Result<()> {
        self.switches
            .set(index, u32::from(on), 0)
            .context("setting a kernel switch")
    }

    /// One sampling pass: afterwards every task's record holds its
    /// charged totals and a snapshot of its live processes.
    fn run_pass(&mut self) -> anyhow::Result<()> {
        self.control
            .word(0, offset_of!(Control, pass))
            .fetch_add(1, Ordering::SeqCst);
        self.pass_link.run().context("running the sampling pass")?;
        self.refresh_peers();
        Ok(())
    }

    /// Takes note of the peer rows the kernel took; every minute, looks
    /// at every row again (a row given back in a race is seen there).
    fn refresh_peers(&mut self) {
        if self.peers_rescanned.elapsed() > std::time::Duration::from_secs(60) {
            self.peers_rescanned = std::time::Instant::now();
            self.peers.rescan();
        }
        let used = self.control.get(0).peer_rows_used;
        let config = &self.config;
        self.peers.refresh(used, |slot| config.get(slot));
    }
}

impl Backend for EbpfBackend {
    fn source(&self) -> Source {
        Source::Ebpf
    }

    fn prepare(
        &mut self,
        slot: u32,
        profile: &MonitoringProfile,
        role: SlotRole,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(slot < MAX_TASKS, "task slot {slot} out of range");
        let generation = self.config.get(slot).generation.wrapping_add(1);
        // No thread names the new generation yet: nothing writes the record.
        self.records.set(slot, &TaskRecord::default());
        let flags = slot::IN_USE
            | match role {
                SlotRole::Task => collect_flags(profile),
                SlotRole::Proplet => {
                    collect::ALL | slot::YIELDS_TO_DISCOVERY | slot::PROPLET_LINEAGE
                }
                SlotRole::Provisional => collect::ALL,
                SlotRole::Cgroup => collect_flags(profile) | slot::CGROUP,
            };
        self.set_config(slot, TaskConfig { generation, flags });
        self.active.insert(slot);
        Ok(())
    }

    fn spawn(&mut self, slot: u32, command: &mut Command) -> Result<Child, SpawnError> {
        let tid = nix::unistd::gettid().as_raw() as u32;
        let pidfd = thread_pidfd(tid).context("opening a pidfd of our own thread")?;
        let spawner = ThreadState {
            slot,
            generation: self.target(slot).generation,
            flags: thread::SPAWNER,
            ..ThreadState::default()
        };
        self.threads
            .set(pidfd.as_fd(), &spawner)
            .context("registering the command to track")?;
        let spawned = command.spawn();
        let not_adopted = matches!(self.threads.get(pidfd.as_fd()), Ok(Some(_)));
        let _ = self.threads.remove(pidfd.as_fd());
        let program = command
            .as_std()
            .get_program()
            .to_string_lossy()
            .into_owned();
        let child = spawned.map_err(|source| SpawnError::Exec {
            program: program.clone(),
            source,
        })?;
        if not_adopted {
            return Err(SpawnError::Internal(anyhow!(
                "the kernel did not report the creation of {program} (task_newtask not traced?)"
            )));
        }
        Ok(child)
    }

    fn attach(&mut self, slot: u32, pid: u32) -> anyhow::Result<()> {
        let tree = TreeAttach {
            threads: self.thread_join(slot),
        };
        let attached = tree.run(pid).map_err(|err| match err {
            AttachError::Owned { pid, slot } => {
                anyhow::Error::new(super::AlreadyMember { pid, slot })
            }
            other => anyhow::Error::new(other),
        })?;
        tracing::debug!("attached PID {pid}: {attached:?}");
        // Baselines are taken, and the tree shows, at once.
        self.run_pass()
    }

    fn attach_cgroup(&mut self, slot: u32, cgroup: &Cgroup) -> anyhow::Result<()> {
        let target = self.target(slot);
        if let Ok(owner) = self.cgroups.get(&cgroup.id, 0)
            && owner != target
            && self.live_generation(owner.slot) == Some(owner.generation)
        {
            return Err(anyhow::Error::new(super::CgroupTaken { slot: owner.slot }));
        }
        self.attach_needed(Need::Cgroups)?;
        // First the kernel follows migrations, then we attach who is
        // there: a process moving in meanwhile is a member either way.
        self.cgroups
            .insert(cgroup.id, target, 0)
            .map_err(|err| match err {
                aya::maps::MapError::SyscallError(ref e)
                    if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    anyhow!("at most {MAX_CGROUP_TASKS} cgroups can define tasks at once")
                }
                other => anyhow::Error::new(other).context("registering the cgroup"),
            })?;
        if let Some(old) = self.cgroup_slots.insert(slot, cgroup.id)
            && old != cgroup.id
        {
            let _ = self.cgroups.remove(&old); // the cgroup was made again
        }
        self.set_switch(switch::CGROUPS, true)?;
        let others: HashSet<u64> = self
            .cgroup_slots
            .iter()
            .filter(|(other, _)| **other != slot)
            .map(|(_, id)| *id)
            .collect();
        let attached = CgroupAttach {
            threads: self.thread_join(slot),
            cgroup,
            others: &others,
        }
        .run()
        .with_context(|| format!("attaching the processes in cgroup {}", cgroup.path))?;
        tracing::debug!("attached cgroup {}: {attached:?}", cgroup.path);
        if attached.kept_by_other_tasks > 0 {
            tracing::warn!(
                "cgroup {}: {} processes in it already belong to other tasks and stay there \
                 (a process belongs to one task)",
                cgroup.path,
                attached.kept_by_other_tasks
            );
        }
        self.run_pass()
    }

    fn refresh(&mut self) {}

    fn sample(&mut self) -> anyhow::Result<()> {
        self.run_pass()
    }

    fn totals(&mut self, slot: u32) -> anyhow::Result<TaskTotals> {
        anyhow::ensure!(slot < MAX_TASKS, "task slot {slot} out of range");
        let record = self.records.get(slot);
        let counters = record.counters;
        let unix = NetBucket::Unix as usize;
        let net = self.peers.totals(
            slot,
            &record.unlisted,
            (record.net.rx_bytes[unix], record.net.tx_bytes[unix]),
        );
        Ok(TaskTotals {
            cpu_ns: counters.cpu_ns,
            live_processes: record.procs_started.saturating_sub(record.procs_exited),
            live_threads: record.threads_started.saturating_sub(record.threads_freed),
            processes_started: Some(record.procs_started),
            disk: Some(DiskTotals {
                read_bytes: counters.read_bytes,
                write_bytes: counters.write_bytes,
                details: Some(DiskDetails {
                    cancelled_write_bytes: counters.cancelled_write_bytes,
                    rchar: counters.rchar,
                    wchar: counters.wchar,
                    syscr: counters.syscr,
                    syscw: counters.syscw,
                }),
            }),
            net: Some(net),
        })
    }

    fn processes(&mut self, slot: u32) -> ProcessSample {
        if slot >= MAX_TASKS {
            return ProcessSample::default();
        }
        let snapshot = self.records.get(slot).snapshot;
        if snapshot.pass != self.control.get(0).pass {
            return ProcessSample::default(); // no live thread in the last pass
        }
        ProcessSample {
            memory_bytes: snapshot.rss_pages * procfs::page_size(),
            threads: Some(snapshot.threads),
            file_descriptors: Some(snapshot.file_descriptors),
            processes: snapshot.processes,
        }
    }

    fn peers(&mut self, slot: u32) -> Vec<super::PeerTotals> {
        if slot >= MAX_TASKS {
            return Vec::new();
        }
        self.peers.peers(slot, &self.records.get(slot).unlisted)
    }

    fn enable_discovery(&mut self, require_lineage: bool) -> anyhow::Result<()> {
        self.attach_needed(Need::Discovery)?;
        self.set_switch(switch::REQUIRE_LINEAGE, require_lineage)?;
        self.set_switch(switch::DISCOVERY, true)
    }

    fn discover(&mut self, slot: u32, task_id: &str) -> anyhow::Result<()> {
        let key = discovery_key(task_id)?;
        self.discover
            .insert(key, self.target(slot), 0)
            .map_err(|err| match err {
                aya::maps::MapError::SyscallError(ref e)
                    if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    anyhow!(
                        "{} tasks are already waiting for their process (the kernel's limit)",
                        monitor_common::MAX_DISCOVERIES
                    )
                }
                other => anyhow::Error::new(other).context("registering a task id for discovery"),
            })?;
        self.discovering.insert(task_id.to_owned(), slot);
        Ok(())
    }

    fn forget_discovery(&mut self, task_id: &str) {
        if self.discovering.remove(task_id).is_none() {
            return;
        }
        if let Ok(key) = discovery_key(task_id) {
            let _ = self.discover.remove(&key);
        }
    }

    fn add_provisional_slot(&mut self, slot: u32) -> anyhow::Result<()> {
        // Everything is collected; the task's profile decides what it shows.
        let profile = crate::profiles::Preset::Intensive.profile();
        self.prepare(slot, &profile, SlotRole::Provisional)?;
        let target = self.target(slot);
        self.provisional_pool
            .push(target, 0)
            .context("handing a provisional slot to the kernel")
    }

    fn end_provisional(&mut self, task_id: &str) {
        if let Ok(key) = discovery_key(task_id) {
            let _ = self.provisional.remove(&key);
        }
    }

    fn events(&mut self) -> BackendEvents {
        if let Some(log) = self.kernel_log.as_mut() {
            log.flush();
        }
        let mut result = BackendEvents::default();
        let mut moved = false;
        while let Some(item) = self.events.next() {
            let Some(event) = read_event(&item) else {
                continue;
            };
            if self.config.get(event.slot).generation != event.generation {
                continue; // about a task that ended since
            }
            match event.kind {
                TaskEvent::MOVED => {
                    moved = true;
                    result.maybe_ended.push(event.slot);
                }
                TaskEvent::DISCOVERED => {
                    self.discovering.retain(|_, slot| *slot != event.slot);
                    result.discovered.push(event.slot);
                }
                TaskEvent::PROVISIONAL => {
                    let id = String::from_utf8_lossy(&event.task_id)
                        .trim_end_matches('\0')
                        .to_owned();
                    result.provisional.push((id, event.slot));
                }
                _ => result.maybe_ended.push(event.slot),
            }
        }
        let drops = self.kernel_stats().event_drops;
        if drops > self.event_drops {
            // Events were lost: look at every task once, and settle any
            // move at once.
            self.event_drops = drops;
            result.maybe_ended.extend(self.active.iter().copied());
            moved = true;
        }
        if moved && let Err(err) = self.run_pass() {
            // A process changed cgroup: its other threads change task at
            // the next look at them, which this pass is.
            tracing::warn!("{err:#}");
        }
        result.maybe_ended.sort_unstable();
        result.maybe_ended.dedup();
        result
    }

    fn event_fd(&self) -> Option<i32> {
        Some(self.poll.as_raw_fd())
    }

    fn release(&mut self, slot: u32) {
        if slot >= MAX_TASKS {
            return;
        }
        self.active.remove(&slot);
        self.peers.release(slot);
        if let Some(id) = self.cgroup_slots.remove(&slot) {
            let _ = self.cgroups.remove(&id);
            if self.cgroup_slots.is_empty()
                && let Err(err) = self.set_switch(switch::CGROUPS, false)
            {
                tracing::debug!("{err:#}");
            }
        }
        let generation = self.config.get(slot).generation.wrapping_add(1);
        // Every thread that still names the slot is a stranger from now on.
        self.set_config(
            slot,
            TaskConfig {
                generation,
                flags: 0,
            },
        );
    }

    fn resumed(&self) -> bool {
        self.resumed
    }

    fn keeps_state(&self) -> bool {
        self.pinned
    }

    fn hasten_releases(&mut self) {
        self.releases.flush();
    }

    fn live_generation(&self, slot: u32) -> Option<u32> {
        let config = (slot < MAX_TASKS).then(|| self.config.get(slot))?;
        (config.flags & slot::IN_USE != 0).then_some(config.generation)
    }

    fn adopt_slot(&mut self, slot: u32) {
        self.active.insert(slot);
    }

    fn drain_provisional_pool(&mut self) -> Vec<u32> {
        let mut slots = Vec::new();
        while let Ok(target) = self.provisional_pool.pop(0) {
            slots.push(target.slot);
        }
        slots
    }

    fn user_words(&self, slot: u32) -> [u64; USER_WORDS] {
        let words = self.records.get(slot).user.words;
        std::array::from_fn(|index| words[index])
    }

    fn set_user_words(&mut self, slot: u32, words: [u64; USER_WORDS]) {
        let base = offset_of!(TaskRecord, user);
        for (index, word) in words.into_iter().enumerate() {
            self.records
                .word(slot, base + index * 8)
                .store(word, Ordering::Relaxed);
        }
    }

    fn kernel_stats(&self) -> Option<KernelStats> {
        // The inherent method of the same name.
        Some(EbpfBackend::kernel_stats(self))
    }

    fn kernel_usage(&self) -> Option<super::KernelUsage> {
        let maps = vec![
            super::MapUsage {
                map: "peers",
                entries: self.peers.rows_in_use(),
                capacity: u64::from(monitor_common::MAX_PEER_ROWS),
            },
            super::MapUsage {
                map: "discoveries",
                entries: self.discovering.len() as u64,
                capacity: u64::from(monitor_common::MAX_DISCOVERIES),
            },
        ];
        Some(super::KernelUsage {
            programs_loaded: self.programs.loaded,
            programs_attached: self.programs.attached,
            maps,
        })
    }
}

impl EbpfBackend {
    /// Joins threads to the task in `slot`.
    fn thread_join(&self, slot: u32) -> ThreadJoin<'_> {
        ThreadJoin {
            storage: &self.threads,
            config: &self.config,
            records: &self.records,
            target: self.target(slot),
            flags: self.config.get(slot).flags & collect::ALL,
        }
    }
}

/// A thread is released (and its last part charged, `sched_process_free`)
/// in an RCU callback, which kernels with `CONFIG_RCU_LAZY` may hold back
/// for seconds to save power. A task whose processes all exited waits for
/// those releases before its final message: ask the kernel to run its
/// pending callbacks (`rcu_barrier()`, through rcutree's `do_rcu_barrier`
/// parameter, Linux 6.7+), at most every 200 ms, off the sampling loop.
#[derive(Default)]
struct ReleaseFlusher {
    last: Option<std::time::Instant>,
    unavailable: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

const RCU_BARRIER: &str = "/sys/module/rcutree/parameters/do_rcu_barrier";

impl ReleaseFlusher {
    fn flush(&mut self) {
        let now = std::time::Instant::now();
        if self.unavailable.load(Ordering::Relaxed)
            || self
                .last
                .is_some_and(|at| now.duration_since(at) < std::time::Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        let unavailable = self.unavailable.clone();
        let spawned = std::thread::Builder::new()
            .name("rcu-barrier".into())
            .spawn(move || {
                if std::fs::write(RCU_BARRIER, "1").is_err() {
                    // Older kernel: the final message waits for the releases.
                    unavailable.store(true, Ordering::Relaxed);
                }
            });
        if spawned.is_err() {
            self.unavailable.store(true, Ordering::Relaxed);
        }
    }
}

fn collect_flags(profile: &MonitoringProfile) -> u32 {
    [
        (profile.collect_cpu, collect::CPU),
        (profile.collect_disk_io, collect::DISK),
        (profile.collect_network_io, collect::NETWORK),
        (profile.collect_file_descriptors, collect::FILE_DESCRIPTORS),
    ]
    .into_iter()
    .filter(|(wanted, _)| *wanted)
    .fold(0, |flags, (_, flag)| flags | flag)
}

/// A task id as the kernel compares it: NUL-padded bytes.
pub fn discovery_key(task_id: &str) -> anyhow::Result<[u8; DISCOVERY_ID_BYTES]> {
    let bytes = task_id.as_bytes();
    anyhow::ensure!(
        !bytes.is_empty() && bytes.len() < DISCOVERY_ID_BYTES,
        "task id {task_id:?} is too long for exec discovery (at most {} bytes)",
        DISCOVERY_ID_BYTES - 1
    );
    anyhow::ensure!(
        !bytes.iter().any(|&b| b == b'.' || b == b'/' || b == 0),
        "task id {task_id:?} cannot appear in a module file name"
    );
    let mut key = [0u8; DISCOVERY_ID_BYTES];
    key[..bytes.len()].copy_from_slice(bytes);
    Ok(key)
}

fn read_event(bytes: &[u8]) -> Option<TaskEvent> {
    (bytes.len() >= size_of::<TaskEvent>()).then(|| {
        // SAFETY: TaskEvent is plain old data and the length is checked.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TaskEvent>()) }
    })
}

/// [`attach`], counted in `programs`, then the memory of the program's
/// BTF handed back: the peak is one program's, not the sum.
fn attach_counted(
    ebpf: &mut Ebpf,
    hook: &Hook,
    points: &btf::AttachPoints,
    pins: Option<&Pins>,
    programs: &mut Programs,
) -> anyhow::Result<Option<aya::programs::links::PinnedLink>> {
    let attached = attach(ebpf, hook, points, pins);
    release_freed_memory();
    let loaded = attached.is_ok() || is_loaded(ebpf, hook.program);
    programs.count(loaded, attached.is_ok());
    attached
}

/// Loads and attaches one hook; with `pins`, pins its link and returns it.
fn attach(
    ebpf: &mut Ebpf,
    hook: &Hook,
    points: &btf::AttachPoints,
    pins: Option<&Pins>,
) -> anyhow::Result<Option<aya::programs::links::PinnedLink>> {
    let Hook {
        kind,
        program: name,
        target,
        ..
    } = *hook;
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    let loading = || format!("loading the {name} program for {target}");
    let attaching = || format!("attaching to {target}");
    let btf_name = hook.btf_name();
    let btf = &points
        .btf_for(&btf_name)
        .ok_or_else(|| anyhow!("the kernel's BTF has no {btf_name}"))?;
    let link: FdLink = match kind {
        Kind::Tracepoint => {
            let program: &mut BtfTracePoint = program.try_into()?;
            program.load(target, btf).with_context(loading)?;
            let id = program.attach().with_context(attaching)?;
            if pins.is_none() {
                return Ok(None);
            }
            program.take_link(id)?.into()
        }
        Kind::FExit => {
            let program: &mut FExit = program.try_into()?;
            program.load(target, btf).with_context(loading)?;
            let id = program.attach().with_context(attaching)?;
            if pins.is_none() {
                return Ok(None);
            }
            program.take_link(id)?.into()
        }
    };
    let Some(pins) = pins else {
        return Ok(None);
    };
    let path = pins.link_path(name);
    let pinned = link
        .pin(&path)
        .with_context(|| format!("pinning the {name} link at {}", path.display()))?;
    Ok(Some(pinned))
}

/// Loads the sampling pass and makes the link each pass is run from.
fn attach_pass(ebpf: &mut Ebpf, points: &btf::AttachPoints) -> anyhow::Result<IterLink> {
    let btf = &points
        .btf_for(SAMPLING_PASS_BTF)
        .ok_or_else(|| anyhow!("the kernel's BTF has no {SAMPLING_PASS_BTF} (Linux 5.8+)"))?;
    let program: &mut Iter = ebpf
        .program_mut(SAMPLING_PASS)
        .ok_or_else(|| anyhow!("program {SAMPLING_PASS} missing from the eBPF object"))?
        .try_into()?;
    program
        .load("task", btf)
        .context("loading the sampling pass (a task iterator, Linux 5.8+)")?;
    IterLink::attach(program.fd()?.as_fd()).context("attaching the sampling pass")
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

fn map_data<'a>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a MapData> {
    let map = ebpf
        .map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    Ok(match map {
        aya::maps::Map::Array(data)
        | aya::maps::Map::Unsupported(data)
        | aya::maps::Map::HashMap(data) => data,
        _ => return Err(anyhow!("map {name} has an unexpected type")),
    })
}

/// Parsing the kernel's BTF takes tens of MB for a moment; hand it back to
/// the system rather than keep it in the allocator for the agent's life.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// glibc raises its mmap threshold to the size of each large block freed
/// (up to 32 MB), so after the kernel's BTF is freed the next blocks of a
/// few MB come from the heap, where a growing `Vec` is copied rather than
/// remapped and freed blocks stay resident. A fixed threshold keeps large
/// blocks in mappings of their own, returned to the system when freed.
fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: sets an allocator parameter; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the
/// cgroup. Raising the limit costs nothing where it is not used.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; maps may fail on kernels before 5.11");
    }
}
