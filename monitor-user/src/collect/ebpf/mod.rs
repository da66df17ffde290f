//! The eBPF backend: loads and attaches the kernel programs, and reads what
//! they counted.
//!
//! Order of work: preflight checks, BTF offsets, load with the offsets as
//! globals, attach every program, then hand out readers. Dropping the
//! backend detaches and unloads everything.

pub mod btf;
pub mod preflight;

use std::{collections::HashMap as StdHashMap, path::Path};

use anyhow::{Context as _, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{BtfTracePoint, FExit},
};
use monitor_common::{KernelStats, LAYOUT_GLOBAL, MAX_TASKS, TaskCounters, maps};

use super::{DiskTotals, KernelTotals, NetTotals};

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
        let layout = btf::KernelBtf::load(Path::new(btf::VMLINUX_BTF))?.kernel_layout(page_size)?;
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
        Ok(EbpfBackend {
            counters: PerCpuArray::try_from(take_map(&mut ebpf, maps::TASK_COUNTERS)?)?,
            procs: HashMap::try_from(take_map(&mut ebpf, maps::TRACKED_PROCS)?)?,
            spawn_pending: HashMap::try_from(take_map(&mut ebpf, maps::SPAWN_PENDING)?)?,
            stats: PerCpuArray::try_from(take_map(&mut ebpf, maps::KERNEL_STATS)?)?,
            _ebpf: ebpf,
        })
    }

    /// Zeroes a slot's counters: a slot is reused after its task ended.
    pub fn reset_slot(&mut self, slot: u32) -> anyhow::Result<()> {
        anyhow::ensure!(slot < MAX_TASKS, "task slot {slot} out of range");
        let cpus = aya::util::nr_cpus().map_err(|(what, err)| anyhow!("{what}: {err}"))?;
        let zeros = PerCpuValues::try_from(vec![TaskCounters::default(); cpus])?;
        self.counters
            .set(slot, zeros, 0)
            .with_context(|| format!("resetting counters of task slot {slot}"))
    }

    /// Makes the next child forked by thread `tid` the root process of the
    /// task in `slot`, from its first instruction.
    pub fn adopt_next_child_of(&mut self, tid: u32, slot: u32) -> anyhow::Result<()> {
        self.spawn_pending
            .insert(tid, slot, 0)
            .context("registering the command to track")
    }

    /// Withdraws an adoption request; `true` if it was still pending, i.e.
    /// the kernel saw no fork from `tid`.
    pub fn withdraw_adoption(&mut self, tid: u32) -> bool {
        self.spawn_pending.remove(&tid).is_ok()
    }

    /// The cumulative counters of a task, summed over CPUs.
    pub fn totals(&self, slot: u32) -> anyhow::Result<KernelTotals> {
        let per_cpu = self
            .counters
            .get(&slot, 0)
            .with_context(|| format!("reading counters of task slot {slot}"))?;
        let mut sum = TaskCounters::default();
        per_cpu.iter().for_each(|cpu| sum.accumulate(cpu));
        Ok(KernelTotals {
            cpu_ns: sum.cpu_ns,
            live_processes: sum.live_processes(),
            live_threads: sum.live_threads(),
            processes_started: sum.procs_started,
            disk: DiskTotals {
                read_bytes: sum.disk_read_bytes,
                dirtied_bytes: sum.disk_dirtied_bytes,
                direct_write_bytes: sum.disk_direct_write_bytes,
                submitted_write_bytes: sum.disk_submitted_write_bytes,
                cancelled_write_bytes: sum.disk_cancelled_write_bytes,
            },
            net: NetTotals {
                tx: sum.net_tx,
                rx: sum.net_rx,
            },
        })
    }

    /// Live tracked processes, grouped by task slot.
    pub fn processes_by_slot(&self) -> StdHashMap<u32, Vec<u32>> {
        let mut by_slot: StdHashMap<u32, Vec<u32>> = StdHashMap::new();
        // An entry removed while we iterate ends the walk early or is
        // skipped; the next sample sees a consistent map again.
        for (tgid, slot) in self.procs.iter().flatten() {
            by_slot.entry(slot).or_default().push(tgid);
        }
        by_slot
    }

    /// Records the kernel could not make (maps full), summed over CPUs.
    pub fn kernel_stats(&self) -> anyhow::Result<KernelStats> {
        let per_cpu = self.stats.get(&0, 0).context("reading kernel stats")?;
        let mut sum = KernelStats::default();
        per_cpu.iter().for_each(|cpu| sum.accumulate(cpu));
        Ok(sum)
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
