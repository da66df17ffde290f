//! The sampling engine: every task, each on its own interval, from one loop
//! whose cost grows with the number of tracked tasks, not with the number
//! of processes on the host (the kernel lists each task's processes).
//!
//! Each round: refresh the backend, look at the tasks the backend says may
//! have ended, sample the tasks that are due, and send a final message for
//! every task whose last thread is gone.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    collect::{Backend, SpawnError, TaskTotals},
    export::{Outgoing, Sink},
    message::Source,
    tasks::{Observation, SlotAllocator, Task, TaskSpec},
};

/// A task whose processes have all exited but whose threads the kernel
/// has not released (an unreaped zombie) is reported after this long; its
/// CPU is final anyway.
const UNREAPED_GRACE: Duration = Duration::from_secs(1);

pub struct Engine {
    backend: Box<dyn Backend>,
    sink: Box<dyn Sink>,
    slots: SlotAllocator,
    tasks: BTreeMap<u32, Task>,
    host_memory_bytes: u64,
    /// How often rounds run when no task is due, to notice ended tasks.
    poll_period: Duration,
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
        spec: TaskSpec,
        command: &mut tokio::process::Command,
    ) -> Result<(u32, tokio::process::Child), SpawnError> {
        let slot = self.reserve(&spec)?;
        match self.backend.spawn(slot, command) {
            Ok(child) => {
                self.tasks
                    .insert(slot, Task::new(spec, slot, Instant::now()));
                Ok((slot, child))
            }
            Err(err) => {
                self.unreserve(slot);
                Err(err)
            }
        }
    }

    /// Starts monitoring the running process `pid` and its descendants.
    pub fn attach(&mut self, spec: TaskSpec, pid: u32) -> anyhow::Result<u32> {
        let slot = self.reserve(&spec)?;
        if let Err(err) = self.backend.attach(slot, pid) {
            self.unreserve(slot);
            return Err(err);
        }
        self.tasks
            .insert(slot, Task::new(spec, slot, Instant::now()));
        Ok(slot)
    }

    fn reserve(&mut self, spec: &TaskSpec) -> anyhow::Result<u32> {
        let slot = self.slots.allocate()?;
        if let Err(err) = self.backend.prepare(slot, &spec.profile) {
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
            .map(|task| task.next_due)
            .fold(poll, Instant::min)
    }

    /// One round at `now`; returns the tasks that ended in it.
    pub fn round(&mut self, now: Instant) -> Vec<Ended> {
        self.backend.refresh();
        let mut ended = Vec::new();
        let hinted: BTreeSet<u32> = self.backend.ended_hints().into_iter().collect();
        let watched: Vec<u32> = self
            .tasks
            .values()
            .filter(|task| hinted.contains(&task.slot) || task.processes_gone_since.is_some())
            .map(|task| task.slot)
            .collect();
        for slot in watched {
            if self.has_ended(slot, now) {
                ended.push(slot);
            }
        }
        let due: Vec<u32> = self
            .tasks
            .values()
            .filter(|task| task.next_due <= now && !ended.contains(&task.slot))
            .map(|task| task.slot)
            .collect();
        if !due.is_empty() {
            let mut processes = self.backend.processes();
            for slot in due {
                let pids = processes.remove(&slot).unwrap_or_default();
                self.emit(slot, &pids, false);
                if let Some(task) = self.tasks.get_mut(&slot) {
                    task.schedule_after(now);
                }
            }
        }
        if let Some(losses) = self.backend.new_losses() {
            tracing::warn!("{losses}");
        }
        ended
            .into_iter()
            .filter_map(|slot| self.finish(slot))
            .collect()
    }

    /// Whether a task's last thread is gone (or its processes all exited
    /// long enough ago).
    fn has_ended(&mut self, slot: u32, now: Instant) -> bool {
        let totals = match self.backend.totals(slot) {
            Ok(totals) => totals,
            Err(err) => {
                tracing::warn!("{err:#}");
                return false;
            }
        };
        let Some(task) = self.tasks.get_mut(&slot) else {
            return false;
        };
        if totals.live_threads == 0 {
            return true;
        }
        if totals.live_processes > 0 {
            task.processes_gone_since = None;
            return false;
        }
        let since = *task.processes_gone_since.get_or_insert(now);
        if now.duration_since(since) > UNREAPED_GRACE {
            tracing::warn!(
                "task {}: its processes exited but are not reaped; reporting it as ended",
                task.spec.task_id
            );
            return true;
        }
        false
    }

    /// Sends the final message of a task and forgets it.
    pub fn finish(&mut self, slot: u32) -> Option<Ended> {
        let pids = self.backend.processes().remove(&slot).unwrap_or_default();
        self.emit(slot, &pids, true);
        let task = self.tasks.remove(&slot)?;
        self.backend.release(slot);
        self.slots.free(slot);
        Some(Ended {
            slot,
            task_id: task.spec.task_id,
        })
    }

    /// Final messages for every task (the agent is stopping).
    pub fn finish_all(&mut self) -> Vec<Ended> {
        let slots: Vec<u32> = self.tasks.keys().copied().collect();
        slots
            .into_iter()
            .filter_map(|slot| self.finish(slot))
            .collect()
    }

    /// The slot of a task by its id.
    pub fn slot_of(&self, task_id: &str) -> Option<u32> {
        self.tasks
            .values()
            .find(|task| task.spec.task_id == task_id)
            .map(|task| task.slot)
    }

    fn emit(&mut self, slot: u32, pids: &[u32], is_final: bool) {
        let totals = match self.backend.totals(slot) {
            Ok(totals) => totals,
            Err(err) => {
                tracing::warn!("{err:#}");
                TaskTotals::default()
            }
        };
        let processes = if is_final {
            Default::default()
        } else {
            self.backend.sample_processes(pids)
        };
        let source = self.backend.source();
        let Some(task) = self.tasks.get_mut(&slot) else {
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
    profile: crate::profiles::MonitoringProfile,
) -> anyhow::Result<TaskSpec> {
    let task_id = task_id.trim();
    anyhow::ensure!(!task_id.is_empty(), "a task id must not be empty");
    anyhow::ensure!(task_id.len() <= 256, "task id is longer than 256 bytes");
    Ok(TaskSpec {
        task_id: task_id.to_owned(),
        proplet_id: proplet_id.to_owned(),
        profile,
        attribution: None,
    })
}
