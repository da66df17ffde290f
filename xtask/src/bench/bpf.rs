//! What the kernel says about the BPF programs and maps of one process
//! (a propmon or a bpftrace): per-program run counters, and the kernel
//! memory of its maps.
//!
//! Programs are found by owner, not by name: other propmons (tests of
//! other worktrees) and tracers may run on the same machine, and their
//! programs share our names. Each BPF object a process holds open shows
//! in `/proc/<pid>/fdinfo/<fd>`: a program or link with `prog_id`, a map
//! with `map_id` and `memlock`; a program fd also shows `run_cnt` and
//! `run_time_ns` (Linux 5.1+). bpftool is only asked for names.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Per-program run counters on while it lives. `BPF_ENABLE_STATS` (Linux
/// 5.8+) rather than the `kernel.bpf_stats_enabled` sysctl: the kernel
/// counts while any such fd is open, so another user of the machine
/// setting the sysctl back to 0 (a test of another worktree) cannot stop
/// our counters, and we never change theirs.
pub struct BpfStats {
    _fd: OwnedFd,
}

impl BpfStats {
    pub fn enable() -> anyhow::Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        let fd = bpf_fd(BPF_ENABLE_STATS, &[BPF_STATS_RUN_TIME, 0, 0, 0])
            .context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")?;
        Ok(BpfStats { _fd: fd })
    }
}

/// A `bpf(2)` command that returns a new fd; `attr` is its `union bpf_attr`.
fn bpf_fd(command: libc::c_long, attr: &[u32; 4]) -> std::io::Result<OwnedFd> {
    // SAFETY: the kernel reads `size_of_val(attr)` bytes of `attr`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr.as_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A program's run counters.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ProgramStats {
    pub run_count: u64,
    pub run_time_ns: u64,
}

impl ProgramStats {
    /// What ran since `before` (a snapshot of the same program).
    pub fn since(self, before: ProgramStats) -> ProgramStats {
        ProgramStats {
            run_count: self.run_count.saturating_sub(before.run_count),
            run_time_ns: self.run_time_ns.saturating_sub(before.run_time_ns),
        }
    }

    pub fn ns_per_run(self) -> Option<f64> {
        (self.run_count > 0).then(|| self.run_time_ns as f64 / self.run_count as f64)
    }
}

/// Program name -> counters.
pub type Programs = BTreeMap<String, ProgramStats>;

/// The programs we expect, by full name: propmon's (see
/// `monitor-user/src/collect/ebpf/mod.rs`; the two fexit programs do not
/// load under lockdown) and the tracepoints of the bpftrace peers, whose
/// programs bpftrace names after the tracepoint. The kernel keeps 15 bytes
/// of a name; bpftool shows the whole name only when BTF has it.
const KNOWN_NAMES: [&str; 13] = [
    "task_newtask",
    "sched_process_exit",
    "sched_process_free",
    "exec_discovery",
    "sock_send_length",
    "sock_recv_length",
    "inet_sock_set_state",
    "tcp_retransmit_skb",
    "tcp_receive_reset",
    "sampling_pass",
    "tcp_splice_read",
    "unix_stream_splice_read",
    "sched_stat_runtime",
];

/// The full name of a program, from the name the kernel shows.
fn full_name(shown: &str) -> String {
    KNOWN_NAMES
        .into_iter()
        .find(|full| *full == shown || (shown.len() == 15 && full.starts_with(shown)))
        .unwrap_or(shown)
        .to_owned()
}

/// The `key:\tvalue` numbers of one fdinfo file.
fn fdinfo_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
}

/// Every fdinfo file of a process (empty once it is gone).
fn fdinfos(pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .collect()
}

/// The ids of the programs a process holds (its program fds and links).
fn program_ids(pid: u32) -> BTreeSet<u64> {
    fdinfos(pid)
        .iter()
        .filter_map(|text| fdinfo_field(text, "prog_id"))
        .collect()
}

/// Program id -> full name, from bpftool.
fn program_names() -> BTreeMap<u64, String> {
    let Ok(output) = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
    else {
        return BTreeMap::new();
    };
    let programs: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
    programs
        .iter()
        .filter_map(|program| {
            let id = program["id"].as_u64()?;
            Some((id, full_name(program["name"].as_str()?)))
        })
        .collect()
}

/// Names programs by id, asking bpftool only about ids it has not seen.
#[derive(Default)]
struct Namer {
    names: BTreeMap<u64, String>,
}

impl Namer {
    /// The programs `pid` holds now: id and full name.
    fn program_ids(&mut self, pid: u32) -> Vec<(u64, String)> {
        let ids = program_ids(pid);
        if ids.iter().any(|id| !self.names.contains_key(id)) {
            self.names.extend(program_names());
        }
        ids.into_iter()
            .map(|id| {
                let name = self.names.get(&id).cloned();
                (id, name.unwrap_or_else(|| format!("program {id}")))
            })
            .collect()
    }
}

/// Programs of another process, held open by us: a program stays loaded,
/// with its counters, as long as one fd refers to it, so what a `propmon
/// run` counted can be read after it exits, without polling while the
/// load runs (polling would itself load the machine).
pub struct HeldPrograms {
    programs: Vec<(String, OwnedFd)>,
}

impl HeldPrograms {
    /// Takes a reference to every program `pid` holds, once it holds one
    /// named `last` (the program its owner loads last), polling until then.
    pub fn wait_for(pid: u32, last: &str, timeout: Duration) -> anyhow::Result<Self> {
        let mut namer = Namer::default();
        let deadline = Instant::now() + timeout;
        loop {
            let ids = namer.program_ids(pid);
            if ids.iter().any(|(_, name)| name == last) {
                return Self::hold(ids);
            }
            if Instant::now() > deadline || !Path::new(&format!("/proc/{pid}")).exists() {
                bail!("PID {pid} never loaded a program named {last}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes a reference to each program (id, name).
    pub fn hold(ids: Vec<(u64, String)>) -> anyhow::Result<Self> {
        let programs = ids
            .into_iter()
            .map(|(id, name)| Ok((name, program_fd(id)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(HeldPrograms { programs })
    }

    /// Their counters now, by name.
    pub fn counters(&self) -> Programs {
        let mut programs = Programs::new();
        for (name, fd) in &self.programs {
            let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let entry = programs.entry(name.clone()).or_default();
            entry.run_count += fdinfo_field(&text, "run_cnt").unwrap_or(0);
            entry.run_time_ns += fdinfo_field(&text, "run_time_ns").unwrap_or(0);
        }
        programs
    }
}

/// A new fd for a loaded program (`BPF_PROG_GET_FD_BY_ID`, Linux 4.13+).
fn program_fd(id: u64) -> anyhow::Result<OwnedFd> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    // prog_id, next_id, open_flags.
    bpf_fd(BPF_PROG_GET_FD_BY_ID, &[id as u32, 0, 0, 0])
        .with_context(|| format!("opening BPF program {id}"))
}

/// What ran between two snapshots of the same programs.
pub fn difference(after: &Programs, before: &Programs) -> Programs {
    after
        .iter()
        .map(|(name, stats)| {
            let earlier = before.get(name).copied().unwrap_or_default();
            (name.clone(), stats.since(earlier))
        })
        .collect()
}

/// Kernel memory of the maps a process holds (`memlock`, what bpftool
/// shows as `bytes_memlock`), while it runs.
pub fn map_memory_bytes(pid: u32) -> Option<u64> {
    let maps: BTreeMap<u64, u64> = fdinfos(pid)
        .iter()
        .filter_map(|text| {
            Some((
                fdinfo_field(text, "map_id")?,
                fdinfo_field(text, "memlock")?,
            ))
        })
        .collect();
    (!maps.is_empty()).then(|| maps.values().sum())
}
