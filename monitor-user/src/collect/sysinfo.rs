//! The fallback backend, for hosts without eBPF: the `sysinfo` crate's view
//! of the process table, polled.
//!
//! What it can and cannot see: a task is its root process plus every
//! process found below a member at a refresh (members stay members when
//! re-parented). A process that starts and exits between two refreshes is
//! missed entirely; CPU is in whole milliseconds; there are no per-task
//! network figures and no disk breakdown. Figures of exited members are
//! kept, so totals never go back.

use std::collections::{HashMap, HashSet};

use anyhow::{Context as _, bail};
use sysinfo::{Pid, Process, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};
use tokio::process::{Child, Command};

use super::{Backend, BackendEvents, DiskTotals, ProcessSample, SlotRole, SpawnError, TaskTotals};
use crate::{message::Source, profiles::MonitoringProfile};

pub struct SysinfoBackend {
    system: System,
    tasks: HashMap<u32, SysTask>,
    /// `proplet_<id>.wasm` -> slot, looked for in command lines at refresh.
    discovering: HashMap<String, u32>,
    discovered: Vec<u32>,
    refreshed_at: std::time::Instant,
}

#[derive(Default)]
struct SysTask {
    members: HashMap<Pid, Member>,
    /// Figures of members that exited.
    gone: Counters,
}

#[derive(Clone, Copy, Default)]
struct Member {
    /// Process start time (s since epoch), to tell a recycled PID apart.
    start_time: u64,
    /// What the process had consumed before it joined (attach).
    baseline: Counters,
    last: Counters,
}

#[derive(Clone, Copy, Default)]
struct Counters {
    cpu_ms: u64,
    read_bytes: u64,
    written_bytes: u64,
}

impl SysinfoBackend {
    pub fn new() -> anyhow::Result<Self> {
        let mut system = System::new().context("initialising sysinfo")?;
        system.refresh_processes_specifics(ProcessesToUpdate::All, true, refresh_kind());
        Ok(SysinfoBackend {
            system,
            tasks: HashMap::new(),
            discovering: HashMap::new(),
            discovered: Vec::new(),
            refreshed_at: std::time::Instant::now(),
        })
    }

    /// Adds `pid` (and, for an attach, its descendants) to a task.
    fn join(&mut self, slot: u32, pid: Pid, counted_from_now: bool) -> anyhow::Result<()> {
        // Attaching many tasks at once reads the process table once a second.
        if self.system.process(pid).is_none()
            || self.refreshed_at.elapsed() > std::time::Duration::from_secs(1)
        {
            self.refresh_table();
        }
        let Some(process) = self.system.process(pid) else {
            bail!("no process with PID {pid}");
        };
        let baseline = |p: &Process| {
            if counted_from_now {
                counters_of(p)
            } else {
                Counters::default()
            }
        };
        let task = self.tasks.entry(slot).or_default();
        task.members
            .insert(pid, new_member(process, baseline(process)));
        let descendants = descendants(&self.system, &[pid]);
        for child in descendants {
            if let Some(process) = self.system.process(child) {
                task.members
                    .insert(child, new_member(process, baseline(process)));
            }
        }
        Ok(())
    }
}

fn refresh_kind() -> ProcessRefreshKind {
    ProcessRefreshKind::nothing()
        .with_cpu()
        .with_memory()
        .with_disk_usage()
        .with_tasks()
        .with_cmd(UpdateKind::OnlyIfNotSet)
        .with_exe(UpdateKind::Never)
}

impl SysinfoBackend {
    fn refresh_table(&mut self) {
        self.system
            .refresh_processes_specifics(ProcessesToUpdate::All, true, refresh_kind());
        self.refreshed_at = std::time::Instant::now();
    }

    /// Finds processes whose command line names a module being looked for.
    fn match_discoveries(&mut self) {
        if self.discovering.is_empty() {
            return;
        }
        let mut found = Vec::new();
        for (pid, process) in self.system.processes() {
            if process.thread_kind().is_some() {
                continue;
            }
            for arg in process.cmd() {
                let arg = arg.to_string_lossy();
                let name = arg.rsplit('/').next().unwrap_or_default();
                if let Some(&slot) = self.discovering.get(name) {
                    found.push((name.to_owned(), slot, *pid));
                }
            }
        }
        for (name, slot, pid) in found {
            self.discovering.remove(&name);
            if let (Some(task), Some(process)) =
                (self.tasks.get_mut(&slot), self.system.process(pid))
            {
                task.members
                    .insert(pid, new_member(process, Counters::default()));
                self.discovered.push(slot);
            }
        }
    }
}

fn new_member(process: &Process, baseline: Counters) -> Member {
    Member {
        start_time: process.start_time(),
        baseline,
        last: counters_of(process),
    }
}

fn counters_of(process: &Process) -> Counters {
    let disk = process.disk_usage();
    Counters {
        cpu_ms: process.accumulated_cpu_time(),
        read_bytes: disk.total_read_bytes,
        written_bytes: disk.total_written_bytes,
    }
}

/// Every process below `roots` in the current process table.
fn descendants(system: &System, roots: &[Pid]) -> Vec<Pid> {
    let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
    // On Linux threads are listed too; they are part of their process.
    let processes = system
        .processes()
        .iter()
        .filter(|(_, process)| process.thread_kind().is_none());
    for (pid, process) in processes {
        if let Some(parent) = process.parent() {
            children.entry(parent).or_default().push(*pid);
        }
    }
    let mut found = Vec::new();
    let mut queue = roots.to_vec();
    while let Some(parent) = queue.pop() {
        for &child in children.get(&parent).into_iter().flatten() {
            found.push(child);
            queue.push(child);
        }
    }
    found
}

impl SysTask {
    /// Re-reads the members: the gone are moved to `gone`, new
    /// descendants join from zero.
    fn update(&mut self, system: &System) {
        let mut gone = Vec::new();
        for (pid, member) in &mut self.members {
            match system.process(*pid) {
                Some(process) if process.start_time() == member.start_time => {
                    member.last = counters_of(process);
                }
                _ => gone.push(*pid),
            }
        }
        for pid in gone {
            let member = self.members.remove(&pid).expect("listed above");
            self.gone.cpu_ms += member.last.cpu_ms - member.baseline.cpu_ms.min(member.last.cpu_ms);
            self.gone.read_bytes += member
                .last
                .read_bytes
                .saturating_sub(member.baseline.read_bytes);
            self.gone.written_bytes += member
                .last
                .written_bytes
                .saturating_sub(member.baseline.written_bytes);
        }
        let roots: Vec<Pid> = self.members.keys().copied().collect();
        for child in descendants(system, &roots) {
            if let Some(process) = system.process(child) {
                self.members
                    .entry(child)
                    .or_insert_with(|| new_member(process, Counters::default()));
            }
        }
    }

    fn totals(&self) -> Counters {
        self.members
            .values()
            .fold(self.gone, |sum, member| Counters {
                cpu_ms: sum.cpu_ms + member.last.cpu_ms.saturating_sub(member.baseline.cpu_ms),
                read_bytes: sum.read_bytes
                    + member
                        .last
                        .read_bytes
                        .saturating_sub(member.baseline.read_bytes),
                written_bytes: sum.written_bytes
                    + member
                        .last
                        .written_bytes
                        .saturating_sub(member.baseline.written_bytes),
            })
    }
}

impl Backend for SysinfoBackend {
    fn source(&self) -> Source {
        Source::Sysinfo
    }

    fn prepare(
        &mut self,
        slot: u32,
        _profile: &MonitoringProfile,
        _role: SlotRole,
    ) -> anyhow::Result<()> {
        self.tasks.insert(slot, SysTask::default());
        Ok(())
    }

    fn spawn(&mut self, slot: u32, command: &mut Command) -> Result<Child, SpawnError> {
        let program = command
            .as_std()
            .get_program()
            .to_string_lossy()
            .into_owned();
        let child = command
            .spawn()
            .map_err(|source| SpawnError::Exec { program, source })?;
        if let Some(pid) = child.id() {
            // A command that already exited is simply not seen.
            let _ = self.join(slot, Pid::from_u32(pid), false);
        }
        Ok(child)
    }

    fn attach(&mut self, slot: u32, pid: u32) -> anyhow::Result<()> {
        self.join(slot, Pid::from_u32(pid), true)
    }

    fn refresh(&mut self) {
        self.refresh_table();
        for task in self.tasks.values_mut() {
            task.update(&self.system);
        }
        self.match_discoveries();
    }

    fn sample(&mut self) -> anyhow::Result<()> {
        Ok(()) // `refresh` read the process table this round
    }

    fn discover(&mut self, slot: u32, task_id: &str) -> anyhow::Result<()> {
        self.discovering
            .insert(format!("proplet_{task_id}.wasm"), slot);
        Ok(())
    }

    fn forget_discovery(&mut self, task_id: &str) {
        self.discovering.remove(&format!("proplet_{task_id}.wasm"));
    }

    fn totals(&mut self, slot: u32) -> anyhow::Result<TaskTotals> {
        let task = self.tasks.get(&slot).context("unknown task slot")?;
        let sum = task.totals();
        let live_threads = task
            .members
            .keys()
            .map(|pid| threads_of(&self.system, *pid).unwrap_or(1))
            .sum();
        Ok(TaskTotals {
            cpu_ns: sum.cpu_ms * 1_000_000,
            live_processes: task.members.len() as u64,
            live_threads,
            processes_started: None,
            disk: Some(DiskTotals {
                read_bytes: sum.read_bytes,
                write_bytes: sum.written_bytes,
                details: None,
            }),
            net: None,
        })
    }

    fn processes(&mut self, slot: u32) -> ProcessSample {
        let mut sample = ProcessSample::default();
        let Some(task) = self.tasks.get(&slot) else {
            return sample;
        };
        for pid in task.members.keys().map(|pid| pid.as_u32()) {
            let Some(process) = self.system.process(Pid::from_u32(pid)) else {
                continue;
            };
            sample.memory_bytes += process.memory();
            sample.processes += 1;
            if let Some(threads) = threads_of(&self.system, Pid::from_u32(pid)) {
                sample.threads = Some(sample.threads.unwrap_or(0) + threads);
            }
            if let Some(fds) = file_descriptors(pid) {
                sample.file_descriptors = Some(sample.file_descriptors.unwrap_or(0) + fds);
            }
        }
        sample
    }

    fn events(&mut self) -> BackendEvents {
        BackendEvents {
            maybe_ended: self
                .tasks
                .iter()
                .filter(|(_, task)| task.members.is_empty())
                .map(|(slot, _)| *slot)
                .collect(),
            discovered: std::mem::take(&mut self.discovered),
            provisional: Vec::new(),
        }
    }

    fn release(&mut self, slot: u32) {
        self.tasks.remove(&slot);
    }
}

/// Threads of a process, where the OS lists them (Linux). sysinfo leaves
/// the main thread out of `tasks()` (its id is the process's own).
fn threads_of(system: &System, pid: Pid) -> Option<u64> {
    let tasks: &HashSet<Pid> = system.process(pid)?.tasks()?;
    Some(tasks.len() as u64 + u64::from(!tasks.contains(&pid)))
}

#[cfg(target_os = "linux")]
fn file_descriptors(pid: u32) -> Option<u64> {
    super::procfs::file_descriptors(pid)
}

#[cfg(not(target_os = "linux"))]
fn file_descriptors(_pid: u32) -> Option<u64> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::{
        io::{BufRead as _, BufReader},
        process::{Command, Stdio},
    };

    use super::*;
    use crate::profiles::Preset;

    /// Set in the environment of [`thread_holder`]'s process.
    const HOLDER: &str = "PROPMON_TEST_THREAD_HOLDER";
    const READY: &str = "thread-holder-ready";

    /// Not a test by itself: the child process of
    /// `counts_every_thread_of_a_process` (this test binary run again with
    /// [`HOLDER`] set). Starts 3 threads, says so, and waits for its stdin
    /// to close, its thread count steady all the while.
    #[test]
    fn thread_holder() {
        if std::env::var_os(HOLDER).is_none() {
            return;
        }
        for _ in 0..3 {
            std::thread::spawn(|| {
                loop {
                    std::thread::park();
                }
            });
        }
        println!("{READY}");
        let _ = std::io::stdin().read_line(&mut String::new());
        std::process::exit(0);
    }

    /// Issue 10 (item 16): the main thread was left out of the count.
    #[test]
    fn counts_every_thread_of_a_process() {
        let mut holder = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "collect::sysinfo::tests::thread_holder",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HOLDER, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(holder.stdout.take().unwrap());
        let ready = stdout
            .lines()
            .any(|line| line.is_ok_and(|line| line.contains(READY)));
        assert!(ready, "the thread holder did not start");
        let pid = holder.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let threads: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(threads >= 4, "3 threads and the main one: {threads}");

        let mut backend = SysinfoBackend::new().unwrap();
        backend
            .prepare(0, &Preset::Standard.profile(), super::SlotRole::Task)
            .unwrap();
        backend.attach(0, pid).unwrap();
        assert_eq!(backend.processes(0).threads, Some(threads));
        assert_eq!(backend.totals(0).unwrap().live_threads, threads);
        drop(holder.stdin.take());
        assert!(holder.wait().unwrap().success());
    }
}
