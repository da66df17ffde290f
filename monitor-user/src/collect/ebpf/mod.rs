//! The eBPF backend: loads and attaches the kernel programs, and reads what
//! they counted.
//!
//! Order of work: preflight checks, BTF offsets, load with the offsets as
//! globals, attach every program, then read what they count. Dropping the
//! backend detaches and unloads everything.

pub mod btf;
pub mod preflight;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{BtfTracePoint, FExit},
};
use monitor_common::{
    DISCOVERY_ID_BYTES, GATE_ADOPT, GATE_DISCOVER, KernelStats, LAYOUT_GLOBAL, MAX_TASKS,
    PendingThread, TaskCounters, TaskEvent, collect, maps,
};
use procfs::process::Process;
use tokio::process::{Child, Command};

use super::{
    Backend, BackendEvents, DiskBreakdown, DiskTotals, NetTotals, ProcessSample, SpawnError,
    TaskTotals,
};
use crate::{message::Source, profiles::MonitoringProfile};

/// The kernel object built from `monitor-ebpf` by build.rs.
static PROGRAMS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// Every program of the object and where it attaches.
const HOOKS: &[Hook] = &[
    Hook::required(Kind::Tracepoint, "task_newtask", "task_newtask"),
    Hook::required(Kind::Tracepoint, "sched_process_exit", "sched_process_exit"),
    Hook::required(Kind::Tracepoint, "sched_process_free", "sched_process_free"),
    Hook::required(Kind::Tracepoint, "sched_stat_runtime", "sched_stat_runtime"),
    Hook::required(Kind::Tracepoint, "block_bio_queue", "block_bio_queue"),
    Hook::required(
        Kind::Tracepoint,
        "writeback_dirty_folio",
        "writeback_dirty_folio",
    ),
    Hook::required(Kind::Tracepoint, "sock_send_length", "sock_send_length"),
    Hook::required(Kind::Tracepoint, "sock_recv_length", "sock_recv_length"),
    Hook::required(Kind::Tracepoint, "exec_discovery", "sched_process_exec"),
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
}

impl Hook {
    const fn required(kind: Kind, program: &'static str, target: &'static str) -> Self {
        Hook {
            kind,
            program,
            target,
            uncounted_without: None,
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

pub struct EbpfBackend {
    /// Owns the programs and their links: they stay attached while it lives.
    _ebpf: Ebpf,
    counters: PerCpuArray<MapData, TaskCounters>,
    procs: HashMap<MapData, u32, u32>,
    spawn_pending: HashMap<MapData, u32, u32>,
    stats: PerCpuArray<MapData, KernelStats>,
    config: Array<MapData, u32>,
    adopt_pending: HashMap<MapData, u32, PendingThread>,
    adopt_gate: Array<MapData, u32>,
    discover: HashMap<MapData, [u8; DISCOVERY_ID_BYTES], u32>,
    /// Task ids the kernel is looking for.
    discovering: BTreeMap<String, u32>,
    events: RingBuf<MapData>,
    /// Slots in use, for a full sweep when events were lost.
    active: BTreeSet<u32>,
    /// Threads handed to the kernel for adoption and not yet seen adopted.
    awaiting_adoption: BTreeSet<u32>,
    last_adoption_sweep: Instant,
    reported: KernelStats,
    process_tree: ProcessTree,
}

impl EbpfBackend {
    /// Checks privileges, loads and attaches every program.
    pub fn load() -> Result<Self, Unavailable> {
        preflight::check()?;
        Self::load_checked().map_err(Unavailable::Failed)
    }

    fn load_checked() -> anyhow::Result<Self> {
        raise_memlock_limit();
        let page_size = u32::try_from(procfs::page_size()).context("page size")?;
        let ns_per_tick =
            u32::try_from(1_000_000_000 / procfs::ticks_per_second()).context("clock ticks")?;
        let layout = btf::KernelBtf::load(Path::new(btf::VMLINUX_BTF))?
            .kernel_layout(page_size, ns_per_tick)?;
        let mut ebpf = EbpfLoader::new()
            .override_global(LAYOUT_GLOBAL, &layout, true)
            .load(PROGRAMS_OBJECT)
            .context("loading the eBPF object (maps and globals)")?;
        let kernel_btf = Btf::from_sys_fs().context("reading kernel BTF")?;
        for hook in HOOKS {
            match (attach(&mut ebpf, hook, &kernel_btf), hook.uncounted_without) {
                (Ok(()), _) => {}
                (Err(err), None) => return Err(err),
                (Err(err), Some(uncounted)) => {
                    tracing::warn!("{uncounted} are not counted: {err:#}");
                }
            }
        }
        drop(kernel_btf);
        release_freed_memory();
        Ok(EbpfBackend {
            counters: PerCpuArray::try_from(take_map(&mut ebpf, maps::TASK_COUNTERS)?)?,
            procs: HashMap::try_from(take_map(&mut ebpf, maps::TRACKED_PROCS)?)?,
            spawn_pending: HashMap::try_from(take_map(&mut ebpf, maps::SPAWN_PENDING)?)?,
            stats: PerCpuArray::try_from(take_map(&mut ebpf, maps::KERNEL_STATS)?)?,
            config: Array::try_from(take_map(&mut ebpf, maps::TASK_CONFIG)?)?,
            adopt_pending: HashMap::try_from(take_map(&mut ebpf, maps::ADOPT_PENDING)?)?,
            adopt_gate: Array::try_from(take_map(&mut ebpf, maps::ADOPT_GATE)?)?,
            events: RingBuf::try_from(take_map(&mut ebpf, maps::TASK_EVENTS)?)?,
            discover: HashMap::try_from(take_map(&mut ebpf, maps::DISCOVER)?)?,
            discovering: BTreeMap::new(),
            _ebpf: ebpf,
            active: BTreeSet::new(),
            awaiting_adoption: BTreeSet::new(),
            last_adoption_sweep: Instant::now(),
            reported: KernelStats::default(),
            process_tree: ProcessTree::default(),
        })
    }

    /// Records the kernel could not make (maps full), summed over CPUs.
    pub fn kernel_stats(&self) -> anyhow::Result<KernelStats> {
        let per_cpu = self.stats.get(&0, 0).context("reading kernel stats")?;
        let mut sum = KernelStats::default();
        per_cpu.iter().for_each(|cpu| sum.accumulate(cpu));
        Ok(sum)
    }

    fn reset_counters(&mut self, slot: u32) -> anyhow::Result<()> {
        anyhow::ensure!(slot < MAX_TASKS, "task slot {slot} out of range");
        let cpus = aya::util::nr_cpus().map_err(|(what, err)| anyhow!("{what}: {err}"))?;
        let zeros = PerCpuValues::try_from(vec![TaskCounters::default(); cpus])?;
        self.counters
            .set(slot, zeros, 0)
            .with_context(|| format!("resetting counters of task slot {slot}"))
    }

    /// Hands the threads of `pid` to the kernel for adoption.
    fn queue_threads_of(&mut self, slot: u32, pid: u32) -> anyhow::Result<()> {
        let process =
            Process::new(pid as i32).with_context(|| format!("no process with PID {pid}"))?;
        let tasks = process
            .tasks()
            .with_context(|| format!("listing the threads of PID {pid}"))?;
        for thread in tasks.flatten() {
            let Ok(stat) = thread.stat() else { continue };
            let pending = PendingThread {
                slot,
                _padding: 0,
                start_ticks: stat.starttime,
            };
            self.adopt_pending
                .insert(thread.tid as u32, pending, 0)
                .context("queueing a thread for adoption (too many pending?)")?;
            self.awaiting_adoption.insert(thread.tid as u32);
        }
        Ok(())
    }

    fn set_adoption_gate(&mut self, open: bool) -> anyhow::Result<()> {
        self.adopt_gate
            .set(GATE_ADOPT, u32::from(open), 0)
            .context("setting the adoption gate")
    }

    fn set_discovery_gate(&mut self) -> anyhow::Result<()> {
        let open = !self.discovering.is_empty();
        self.adopt_gate
            .set(GATE_DISCOVER, u32::from(open), 0)
            .context("setting the discovery gate")
    }

    /// Forgets adoption requests the kernel fulfilled or that can no longer
    /// be (the thread exited), and closes the gate when none are left.
    fn sweep_adoptions(&mut self) {
        if self.awaiting_adoption.is_empty()
            || self.last_adoption_sweep.elapsed() < ADOPTION_SWEEP_PERIOD
        {
            return;
        }
        self.last_adoption_sweep = Instant::now();
        let pending = &mut self.adopt_pending;
        self.awaiting_adoption.retain(|tid| {
            if pending.get(tid, 0).is_err() {
                return false; // adopted
            }
            let alive = Path::new(&format!("/proc/{tid}")).exists();
            if !alive {
                let _ = pending.remove(tid);
            }
            alive
        });
        if self.awaiting_adoption.is_empty()
            && let Err(err) = self.set_adoption_gate(false)
        {
            tracing::warn!("{err:#}");
        }
    }
}

/// How often userspace checks on threads queued for adoption.
const ADOPTION_SWEEP_PERIOD: Duration = Duration::from_secs(1);

impl Backend for EbpfBackend {
    fn source(&self) -> Source {
        Source::Ebpf
    }

    fn prepare(&mut self, slot: u32, profile: &MonitoringProfile) -> anyhow::Result<()> {
        self.reset_counters(slot)?;
        self.config
            .set(slot, collect_flags(profile), 0)
            .context("setting the task's collection flags")?;
        self.active.insert(slot);
        Ok(())
    }

    fn spawn(&mut self, slot: u32, command: &mut Command) -> Result<Child, SpawnError> {
        let tid = nix::unistd::gettid().as_raw() as u32;
        self.spawn_pending
            .insert(tid, slot, 0)
            .context("registering the command to track")?;
        let spawned = command.spawn();
        let not_adopted = self.spawn_pending.remove(&tid).is_ok();
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
        // The process first, then the gate, then its descendants: a child
        // it forks meanwhile is adopted through it, one forked before is in
        // the /proc scan that follows.
        self.queue_threads_of(slot, pid)?;
        self.set_adoption_gate(true)?;
        for descendant in self.process_tree.descendants_of(pid) {
            // A descendant that exits meanwhile is no error.
            let _ = self.queue_threads_of(slot, descendant);
        }
        Ok(())
    }

    fn refresh(&mut self) {
        self.sweep_adoptions();
    }

    fn totals(&mut self, slot: u32) -> anyhow::Result<TaskTotals> {
        let per_cpu = self
            .counters
            .get(&slot, 0)
            .with_context(|| format!("reading counters of task slot {slot}"))?;
        let mut sum = TaskCounters::default();
        per_cpu.iter().for_each(|cpu| sum.accumulate(cpu));
        Ok(TaskTotals {
            cpu_ns: sum.cpu_ns,
            live_processes: sum.live_processes(),
            live_threads: sum.live_threads(),
            processes_started: Some(sum.procs_started),
            disk: Some(DiskTotals {
                read_bytes: sum.disk_read_bytes,
                write_bytes: sum.disk_dirtied_bytes + sum.disk_direct_write_bytes,
                breakdown: Some(DiskBreakdown {
                    dirtied_bytes: sum.disk_dirtied_bytes,
                    direct_write_bytes: sum.disk_direct_write_bytes,
                    submitted_write_bytes: sum.disk_submitted_write_bytes,
                    cancelled_write_bytes: sum.disk_cancelled_write_bytes,
                }),
            }),
            net: Some(NetTotals {
                tx: sum.net_tx,
                rx: sum.net_rx,
            }),
        })
    }

    fn processes(&mut self) -> StdHashMap<u32, Vec<u32>> {
        let mut by_slot: StdHashMap<u32, Vec<u32>> = StdHashMap::new();
        // An entry removed while we iterate ends the walk early or is
        // skipped; the next sample sees a consistent map again.
        for (tgid, slot) in self.procs.iter().flatten() {
            by_slot.entry(slot).or_default().push(tgid);
        }
        by_slot
    }

    fn sample_processes(&mut self, pids: &[u32]) -> ProcessSample {
        super::procfs::sample_processes(pids.iter().copied())
    }

    fn discover(&mut self, slot: u32, task_id: &str) -> anyhow::Result<()> {
        let key = discovery_key(task_id)?;
        self.discover
            .insert(key, slot, 0)
            .context("registering a task id for exec discovery")?;
        self.discovering.insert(task_id.to_owned(), slot);
        self.set_discovery_gate()
    }

    fn forget_discovery(&mut self, task_id: &str) {
        if self.discovering.remove(task_id).is_none() {
            return;
        }
        if let Ok(key) = discovery_key(task_id) {
            let _ = self.discover.remove(&key);
        }
        if let Err(err) = self.set_discovery_gate() {
            tracing::warn!("{err:#}");
        }
    }

    fn events(&mut self) -> BackendEvents {
        let mut maybe_ended = BTreeSet::new();
        let mut discovered = BTreeSet::new();
        while let Some(item) = self.events.next() {
            match read_event(&item) {
                Some(TaskEvent {
                    slot,
                    kind: TaskEvent::DISCOVERED,
                }) => {
                    discovered.insert(slot);
                }
                Some(event) => {
                    maybe_ended.insert(event.slot);
                }
                None => {}
            }
        }
        if !discovered.is_empty() {
            // The kernel removed the ids it matched.
            self.discovering
                .retain(|_, slot| !discovered.contains(slot));
            if let Err(err) = self.set_discovery_gate() {
                tracing::warn!("{err:#}");
            }
        }
        let drops = self.kernel_stats().map(|s| s.event_drops).unwrap_or(0);
        if drops > self.reported.event_drops {
            // Events were lost: look at every task once.
            self.reported.event_drops = drops;
            maybe_ended.extend(self.active.iter().copied());
        }
        BackendEvents {
            maybe_ended: maybe_ended.into_iter().collect(),
            discovered: discovered.into_iter().collect(),
        }
    }

    fn release(&mut self, slot: u32) {
        self.active.remove(&slot);
    }

    fn new_losses(&mut self) -> Option<String> {
        let stats = self.kernel_stats().ok()?;
        let threads = stats.thread_insert_failures - self.reported.thread_insert_failures;
        let procs = stats.proc_insert_failures - self.reported.proc_insert_failures;
        self.reported.thread_insert_failures = stats.thread_insert_failures;
        self.reported.proc_insert_failures = stats.proc_insert_failures;
        (threads + procs > 0).then(|| {
            format!(
                "the kernel could not record {threads} new threads and {procs} new processes \
                 (maps full): their figures are missing"
            )
        })
    }
}

fn collect_flags(profile: &MonitoringProfile) -> u32 {
    [
        (profile.collect_cpu, collect::CPU),
        (profile.collect_disk_io, collect::DISK),
        (profile.collect_network_io, collect::NETWORK),
    ]
    .into_iter()
    .filter(|(wanted, _)| *wanted)
    .fold(0, |flags, (_, flag)| flags | flag)
}

/// A task id as the kernel compares it: NUL-padded bytes.
fn discovery_key(task_id: &str) -> anyhow::Result<[u8; DISCOVERY_ID_BYTES]> {
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

/// The parent -> children map of `/proc`, read at most once a second:
/// attaching many tasks at once must not read the whole process table for
/// each. A child forked after the reading is adopted through its parent.
#[derive(Default)]
struct ProcessTree {
    children: StdHashMap<u32, Vec<u32>>,
    read_at: Option<Instant>,
}

impl ProcessTree {
    /// Every process below `pid`.
    fn descendants_of(&mut self, pid: u32) -> Vec<u32> {
        if self
            .read_at
            .is_none_or(|at| at.elapsed() > Duration::from_secs(1))
        {
            self.read();
        }
        let mut found = Vec::new();
        let mut queue = vec![pid];
        while let Some(parent) = queue.pop() {
            for &child in self.children.get(&parent).into_iter().flatten() {
                found.push(child);
                queue.push(child);
            }
        }
        found
    }

    fn read(&mut self) {
        self.children.clear();
        if let Ok(all) = procfs::process::all_processes() {
            for process in all.flatten() {
                if let Ok(stat) = process.stat() {
                    self.children
                        .entry(stat.ppid as u32)
                        .or_default()
                        .push(stat.pid as u32);
                }
            }
        }
        self.read_at = Some(Instant::now());
    }
}

fn attach(ebpf: &mut Ebpf, hook: &Hook, btf: &Btf) -> anyhow::Result<()> {
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
    match kind {
        Kind::Tracepoint => {
            let program: &mut BtfTracePoint = program.try_into()?;
            program.load(target, btf).with_context(loading)?;
            program.attach().with_context(attaching)?;
        }
        Kind::FExit => {
            let program: &mut FExit = program.try_into()?;
            program.load(target, btf).with_context(loading)?;
            program.attach().with_context(attaching)?;
        }
    }
    Ok(())
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// Parsing the kernel's BTF twice (offsets, then program loading) takes
/// tens of MB for a moment; hand it back to the system rather than keep it
/// in the allocator for the agent's whole life.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
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
