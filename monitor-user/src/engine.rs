//! The sampling engine: every task, each on its own interval, from one loop
//! whose cost grows with the number of tracked tasks, not with the number
//! of processes on the host (the kernel lists each task's processes).
//!
//! Each round: refresh the backend, start the tasks whose process appeared,
//! look at the tasks the backend says may have ended, sample the tasks that
//! are due, and send a final message for every task whose last thread is
//! gone.
//!
//! A task normally owns a backend slot. Tasks that run inside the proplet
//! process itself (Propeller's in-process runtime) share the slot of that
//! process and report what it consumed since they started.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    collect::{Backend, SpawnError, TaskTotals},
    export::{Outgoing, Sink},
    input::untrusted,
    message::Source,
    profiles::{MonitoringProfile, Preset},
    tasks::{Observation, SlotAllocator, Task, TaskSpec},
};

/// A task whose processes have all exited but whose threads the kernel
/// has not released (an unreaped zombie) is reported after this long; its
/// CPU is final anyway.
const UNREAPED_GRACE: Duration = Duration::from_secs(1);
/// What in-process tasks report when attributed to the proplet process.
pub const PROPLET_PROCESS_ATTRIBUTION: &str = "proplet-process";

pub struct Engine {
    backend: Box<dyn Backend>,
    sink: Box<dyn Sink>,
    slots: SlotAllocator,
    /// Tasks by engine key.
    tasks: BTreeMap<u64, Task>,
    next_key: u64,
    /// The slot tracking the proplet process, shared by in-process tasks.
    proplet_slot: Option<SharedSlot>,
    host_memory_bytes: u64,
    /// How often rounds run when no task is due, to notice ended tasks.
    poll_period: Duration,
}

struct SharedSlot {
    slot: u32,
    pid: u32,
}

/// A task that sent its final message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub slot: u32,
    pub task_id: String,
}

impl Engine {
    pub fn new(backend: Box<dyn Backend>, sink: Box<dyn Sink>, capacity: u32) -> Self {
        let poll_period = match backend.source() {
            Source::Ebpf => Duration::from_millis(50),
            // Each sysinfo round reads the whole process table.
            Source::Sysinfo => Duration::from_millis(500),
        };
        Engine {
            backend,
            sink,
            slots: SlotAllocator::new(capacity),
            tasks: BTreeMap::new(),
            next_key: 0,
            proplet_slot: None,
            host_memory_bytes: crate::collect::host_memory_bytes(),
            poll_period,
        }
    }

    pub fn source(&self) -> Source {
        self.backend.source()
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    pub fn sink_mut(&mut self) -> &mut dyn Sink {
        self.sink.as_mut()
    }

    /// Starts `command` as a new task.
    pub fn spawn(
        &mut self,
        mut spec: TaskSpec,
        command: &mut tokio::process::Command,
    ) -> Result<(u32, tokio::process::Child), SpawnError> {
        self.fit_history(&mut spec);
        let slot = self.reserve(&spec.profile)?;
        match self.backend.spawn(slot, command) {
            Ok(child) => {
                self.insert(Task::new(spec, slot, Instant::now()));
                Ok((slot, child))
            }
            Err(err) => {
                self.unreserve(slot);
                Err(err)
            }
        }
    }

    /// Starts monitoring the running process `pid` and its descendants.
    pub fn attach(&mut self, mut spec: TaskSpec, pid: u32) -> anyhow::Result<u32> {
        self.fit_history(&mut spec);
        let slot = self.reserve(&spec.profile)?;
        if let Err(err) = self.backend.attach(slot, pid) {
            self.unreserve(slot);
            return Err(err);
        }
        self.insert(Task::new(spec, slot, Instant::now()));
        Ok(slot)
    }

    /// Registers a task whose root process will be found at exec, by its
    /// module path (`proplet_<task_id>.wasm` in argv).
    pub fn discover(&mut self, mut spec: TaskSpec) -> anyhow::Result<u32> {
        self.fit_history(&mut spec);
        let slot = self.reserve(&spec.profile)?;
        if let Err(err) = self.backend.discover(slot, &spec.task_id) {
            self.unreserve(slot);
            return Err(err);
        }
        self.insert(Task::awaiting(spec, slot, Instant::now()));
        Ok(slot)
    }

    /// Reports a task through the proplet process `pid`, in which it runs
    /// (Propeller's in-process runtime): the figures are what that process
    /// consumed since now, flagged `"attribution":"proplet-process"`.
    pub fn attribute_to_proplet(&mut self, mut spec: TaskSpec, pid: u32) -> anyhow::Result<()> {
        let slot = self.proplet_slot(pid)?;
        let baseline = self.backend.totals(slot)?;
        spec.attribution = Some(PROPLET_PROCESS_ATTRIBUTION.to_owned());
        self.fit_history(&mut spec);
        let mut task = Task::new(spec, slot, Instant::now());
        task.set_baseline(baseline);
        self.insert(task);
        Ok(())
    }

    /// The shared slot of the proplet process, attached on first use.
    fn proplet_slot(&mut self, pid: u32) -> anyhow::Result<u32> {
        if let Some(shared) = &self.proplet_slot {
            anyhow::ensure!(
                shared.pid == pid,
                "in-process tasks are already attributed to PID {}",
                shared.pid
            );
            return Ok(shared.slot);
        }
        // Everything is collected for the shared slot; each task's profile
        // decides what its messages show.
        let slot = self.reserve(&Preset::Intensive.profile())?;
        if let Err(err) = self.backend.attach(slot, pid) {
            self.unreserve(slot);
            return Err(err.context(format!("attaching the proplet process {pid}")));
        }
        self.proplet_slot = Some(SharedSlot { slot, pid });
        Ok(slot)
    }

    /// Forgets a task whose process never appeared, without a message;
    /// returns its spec.
    pub fn withdraw(&mut self, task_id: &str) -> Option<TaskSpec> {
        let key = self.key_of(task_id)?;
        if !self.tasks.get(&key)?.awaiting_discovery {
            return None;
        }
        self.backend.forget_discovery(task_id);
        let task = self.tasks.remove(&key)?;
        self.unreserve(task.slot);
        Some(task.spec)
    }

    /// Ends a task now (Propeller's stop): its final message, then it is
    /// forgotten. `None` if no such task.
    pub fn stop(&mut self, task_id: &str) -> Option<Ended> {
        let key = self.key_of(task_id)?;
        self.backend.forget_discovery(task_id);
        self.finish_key(key)
    }

    /// Bounds a new task's history: per task, and across all tasks, so
    /// that start messages cannot buy unbounded memory.
    fn fit_history(&self, spec: &mut TaskSpec) {
        let kept = self
            .tasks
            .values()
            .map(|task| task.spec.profile.history_capacity())
            .sum();
        if let Some(cut) = spec.profile.fit_history(kept) {
            tracing::warn!("task {}: {cut}", untrusted(&spec.task_id));
        }
    }

    fn insert(&mut self, task: Task) {
        self.tasks.insert(self.next_key, task);
        self.next_key += 1;
    }

    fn reserve(&mut self, profile: &MonitoringProfile) -> anyhow::Result<u32> {
        let slot = self.slots.allocate()?;
        if let Err(err) = self.backend.prepare(slot, profile) {
            self.slots.free(slot);
            return Err(err);
        }
        Ok(slot)
    }

    fn unreserve(&mut self, slot: u32) {
        self.backend.release(slot);
        self.slots.free(slot);
    }

    /// When the next round should run.
    pub fn next_wakeup(&self, now: Instant) -> Instant {
        let poll = now + self.poll_period;
        self.tasks
            .values()
            .filter(|task| !task.awaiting_discovery)
            .map(|task| task.next_due)
            .fold(poll, Instant::min)
    }

    /// One round at `now`; returns the tasks that ended in it.
    pub fn round(&mut self, now: Instant) -> Vec<Ended> {
        self.backend.refresh();
        let events = self.backend.events();
        for task in self.tasks.values_mut() {
            if events.discovered.contains(&task.slot) && task.awaiting_discovery {
                tracing::info!(
                    "task {}: its process appeared",
                    untrusted(&task.spec.task_id)
                );
                task.discovered(now);
            }
        }
        let hinted: BTreeSet<u32> = events.maybe_ended.into_iter().collect();
        let watched: BTreeSet<u32> = self
            .tasks
            .values()
            .filter(|task| !task.awaiting_discovery)
            .filter(|task| hinted.contains(&task.slot) || task.processes_gone_since.is_some())
            .map(|task| task.slot)
            .collect();
        let ended_slots: BTreeSet<u32> = watched
            .into_iter()
            .filter(|&slot| self.slot_has_ended(slot, now))
            .collect();
        let due: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, task)| !task.awaiting_discovery && task.next_due <= now)
            .filter(|(_, task)| !ended_slots.contains(&task.slot))
            .map(|(key, _)| *key)
            .collect();
        if !due.is_empty() {
            let mut processes = self.backend.processes();
            for key in due {
                let Some(slot) = self.tasks.get(&key).map(|task| task.slot) else {
                    continue;
                };
                let pids = processes.get(&slot).cloned().unwrap_or_default();
                self.emit(key, &pids, false);
                if let Some(task) = self.tasks.get_mut(&key) {
                    task.schedule_after(now);
                }
            }
            processes.clear();
        }
        if let Some(losses) = self.backend.new_losses() {
            tracing::warn!("{losses}");
        }
        let ended_keys: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, task)| ended_slots.contains(&task.slot))
            .map(|(key, _)| *key)
            .collect();
        self.finish_keys(ended_keys)
    }

    /// Whether a slot's last thread is gone (or its processes all exited
    /// long enough ago).
    fn slot_has_ended(&mut self, slot: u32, now: Instant) -> bool {
        let totals = match self.backend.totals(slot) {
            Ok(totals) => totals,
            Err(err) => {
                tracing::warn!("{err:#}");
                return false;
            }
        };
        let mut ended = totals.live_threads == 0;
        for task in self.tasks.values_mut().filter(|task| task.slot == slot) {
            if ended || totals.live_processes > 0 {
                task.processes_gone_since = None;
                continue;
            }
            let since = *task.processes_gone_since.get_or_insert(now);
            if now.duration_since(since) > UNREAPED_GRACE {
                tracing::warn!(
                    "task {}: its processes exited but are not reaped; reporting it as ended",
                    untrusted(&task.spec.task_id)
                );
                ended = true;
            }
        }
        ended
    }

    /// Sends the final message of a task and forgets it.
    pub fn finish(&mut self, slot: u32) -> Option<Ended> {
        let key = self
            .tasks
            .iter()
            .find(|(_, task)| task.slot == slot)
            .map(|(key, _)| *key)?;
        self.finish_key(key)
    }

    fn finish_key(&mut self, key: u64) -> Option<Ended> {
        self.finish_keys(vec![key]).pop()
    }

    /// Final messages of several tasks, listing the tracked processes once
    /// for all of them (a walk of the whole kernel map).
    fn finish_keys(&mut self, keys: Vec<u64>) -> Vec<Ended> {
        if keys.is_empty() {
            return Vec::new();
        }
        let processes = self.backend.processes();
        keys.into_iter()
            .filter_map(|key| {
                let slot = self.tasks.get(&key)?.slot;
                let pids = processes.get(&slot).map(Vec::as_slice).unwrap_or_default();
                self.release_after_final(key, pids)
            })
            .collect()
    }

    fn release_after_final(&mut self, key: u64, pids: &[u32]) -> Option<Ended> {
        let slot = self.tasks.get(&key)?.slot;
        self.emit(key, pids, true);
        let task = self.tasks.remove(&key)?;
        let shared = self.proplet_slot.as_ref().is_some_and(|s| s.slot == slot);
        let still_used = self.tasks.values().any(|other| other.slot == slot);
        if !still_used {
            if shared {
                self.proplet_slot = None;
            }
            self.backend.release(slot);
            self.slots.free(slot);
        }
        Some(Ended {
            slot,
            task_id: task.spec.task_id,
        })
    }

    /// Final messages for every task (the agent is stopping).
    pub fn finish_all(&mut self) -> Vec<Ended> {
        let keys: Vec<u64> = self.tasks.keys().copied().collect();
        self.finish_keys(keys)
    }

    /// Whether a task with this id is monitored.
    pub fn has_task(&self, task_id: &str) -> bool {
        self.key_of(task_id).is_some()
    }

    /// Whether the task is still waiting for its process to appear.
    pub fn is_awaiting(&self, task_id: &str) -> bool {
        self.key_of(task_id)
            .and_then(|key| self.tasks.get(&key))
            .is_some_and(|task| task.awaiting_discovery)
    }

    fn key_of(&self, task_id: &str) -> Option<u64> {
        self.tasks
            .iter()
            .find(|(_, task)| task.spec.task_id == task_id)
            .map(|(key, _)| *key)
    }

    fn emit(&mut self, key: u64, pids: &[u32], is_final: bool) {
        let Some(slot) = self.tasks.get(&key).map(|task| task.slot) else {
            return;
        };
        let totals = match self.backend.totals(slot) {
            Ok(totals) => totals,
            Err(err) => {
                tracing::warn!("{err:#}");
                TaskTotals::default()
            }
        };
        let processes = if is_final && totals.live_processes == 0 {
            Default::default()
        } else {
            self.backend.sample_processes(pids)
        };
        let source = self.backend.source();
        let Some(task) = self.tasks.get_mut(&key) else {
            return;
        };
        let observation = Observation {
            totals,
            processes,
            host_memory_bytes: self.host_memory_bytes,
            at: Instant::now(),
            wall: SystemTime::now(),
        };
        let message = task.next_message(&observation, source, is_final);
        let export = task.spec.profile.export_to_mqtt;
        self.sink.send(&Outgoing::Task {
            message: Box::new(message),
            export,
        });
    }
}

/// Makes a [`TaskSpec`], checking the task id.
pub fn task_spec(
    task_id: &str,
    proplet_id: &str,
    profile: MonitoringProfile,
) -> anyhow::Result<TaskSpec> {
    let task_id = crate::input::check_task_id("task id", task_id)?;
    Ok(TaskSpec {
        task_id: task_id.to_owned(),
        proplet_id: proplet_id.to_owned(),
        profile,
        attribution: None,
    })
}
