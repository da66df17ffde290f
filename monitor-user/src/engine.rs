//! The sampling engine: every task, each on its own interval, from one loop
//! whose cost per round is constant in the number of tasks and processes:
//! one sample of the backend (one kernel pass) serves every task due.
//!
//! Each round: refresh the backend, take the tasks whose process appeared
//! (or whose module exec'd before it was announced), expire what waited
//! too long, look at the tasks the backend says may have ended, sample
//! once if any task is due, and send a final message for every task whose
//! last thread is gone.
//!
//! Due times lie on a grid (multiples of each task's interval from the
//! engine's start), so that tasks of the same interval, and tasks whose
//! intervals divide each other, share their rounds.
//!
//! A task normally owns a backend slot. Tasks that run inside the proplet
//! process itself (Propeller's in-process runtime) share the slot of that
//! process and report what it consumed since they started. Tasks defined
//! by a cgroup do not end when their last process does: the cgroup may be
//! empty for a while (a service restarting).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant, SystemTime},
};

#[cfg(unix)]
mod resume;

use crate::{
    collect::{
        AlreadyMember, Backend, CgroupTaken, ProcessSample, SlotRole, SpawnError, TaskTotals,
        cgroup::Cgroup,
    },
    export::{Outgoing, Sink},
    input::untrusted,
    message::{self, EndReason, KernelHealth, Source},
    profiles::{MonitoringProfile, Preset},
    tasks::{Observation, SlotAllocator, Task, TaskSpec, grid_after},
};

/// A task whose processes have all exited but whose threads the kernel
/// has not released (an unreaped zombie) is reported after this long; its
/// CPU is final anyway.
const UNREAPED_GRACE: Duration = Duration::from_secs(1);
/// What in-process tasks report when attributed to the proplet process.
pub const PROPLET_PROCESS_ATTRIBUTION: &str = "proplet-process";
/// How long a module process that exec'd before its start message is
/// kept for its task (its figures count from its exec meanwhile).
pub const PROVISIONAL_HOLD: Duration = Duration::from_secs(10);
/// Provisional slots kept ready in the kernel (module execs that may come
/// before their start message, at once), at most an eighth of the slots.
const PROVISIONAL_POOL: usize = 8;
/// How often an ending task is looked at until its threads are released.
const ENDING_POLL: Duration = Duration::from_millis(20);
/// A round at least this often, when nothing is due and the backend wakes
/// the loop for events.
const IDLE_WAKEUP: Duration = Duration::from_secs(60);

pub struct Engine {
    backend: Box<dyn Backend>,
    sink: Box<dyn Sink>,
    slots: SlotAllocator,
    /// Tasks by engine key.
    tasks: BTreeMap<u64, Task>,
    next_key: u64,
    /// The slot tracking the proplet process, shared by in-process tasks.
    proplet_slot: Option<SharedSlot>,
    /// Module processes that exec'd before their task was announced.
    provisional: HashMap<String, Provisional>,
    /// Provisional slots handed to the backend and not used yet.
    pooled: usize,
    /// Whether provisional roots are kept (Propeller mode).
    keep_provisional: bool,
    /// A task whose process has not appeared after this long ends.
    discovery_timeout: Option<Duration>,
    host_memory_bytes: u64,
    /// How often rounds run when no task is due and the backend cannot
    /// wake us, to notice ended tasks.
    poll_period: Duration,
    /// Origin of the due-time grid.
    origin: Instant,
    /// The registry changed since it was last saved.
    changed: bool,
}

struct SharedSlot {
    slot: u32,
    pid: u32,
}

struct Provisional {
    slot: u32,
    since: Instant,
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
            provisional: HashMap::new(),
            pooled: 0,
            keep_provisional: false,
            discovery_timeout: None,
            host_memory_bytes: crate::collect::host_memory_bytes(),
            poll_period,
            origin: Instant::now(),
            changed: false,
        }
    }

    /// Whether the backend took up the kernel state of a previous agent.
    pub fn resumed(&self) -> bool {
        self.backend.resumed()
    }

    /// Whether the tasks go on being counted when the agent stops.
    pub fn keeps_state(&self) -> bool {
        self.backend.keeps_state()
    }

    /// The agent stops but its tasks go on being counted in the kernel,
    /// for the next agent: nothing is released.
    pub fn suspend(&mut self) {
        self.tasks.clear();
        self.proplet_slot = None;
    }

    /// Whether the registry changed since the last call (for saving it).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    pub fn source(&self) -> Source {
        self.backend.source()
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The kernel side's health counters, if the backend has one.
    pub fn kernel_stats(&self) -> Option<monitor_common::KernelStats> {
        self.backend.kernel_stats()
    }

    /// The kernel side's programs and maps, if the backend has one; task
    /// slots and provisional roots are handed out here, so counted here.
    pub fn kernel_usage(&self) -> Option<crate::collect::KernelUsage> {
        let mut usage = self.backend.kernel_usage()?;
        let ours = [
            crate::collect::MapUsage {
                map: "tasks",
                entries: u64::from(self.slots.in_use()),
                capacity: u64::from(self.slots.capacity()),
            },
            crate::collect::MapUsage {
                map: "provisional",
                entries: self.provisional.len() as u64,
                capacity: u64::from(monitor_common::MAX_PROVISIONAL),
            },
        ];
        usage.maps.extend(ours);
        usage.maps.sort_by_key(|usage| usage.map);
        Some(usage)
    }

    pub fn sink_mut(&mut self) -> &mut dyn Sink {
        self.sink.as_mut()
    }

    /// The backend's readiness fd, if it can wake the loop on events.
    pub fn event_fd(&self) -> Option<i32> {
        self.backend.event_fd()
    }

    /// Propeller mode: tasks are found by exec discovery, module processes
    /// that exec before their start message are kept for a while, and
    /// tasks whose process never comes end after `timeout`.
    pub fn enable_discovery(
        &mut self,
        require_lineage: bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.backend.enable_discovery(require_lineage)?;
        self.discovery_timeout = Some(timeout);
        self.keep_provisional = true;
        self.refill_provisional_pool();
        Ok(())
    }

    /// Starts `command` as a new task.
    pub fn spawn(
        &mut self,
        mut spec: TaskSpec,
        command: &mut tokio::process::Command,
    ) -> Result<(u32, tokio::process::Child), SpawnError> {
        self.fit_history(&mut spec);
        let slot = self.reserve(&spec.profile, SlotRole::Task)?;
        match self.backend.spawn(slot, command) {
            Ok(child) => {
                let now = Instant::now();
                let next_due = self.next_due(now, Some(&spec.profile));
                self.insert(Task::new(spec, slot, now, next_due));
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
        let slot = self.reserve(&spec.profile, SlotRole::Task)?;
        if let Err(err) = self.backend.attach(slot, pid) {
            self.unreserve(slot);
            return Err(self.explain(err));
        }
        let now = Instant::now();
        let next_due = self.next_due(now, Some(&spec.profile));
        self.insert(Task::new(spec, slot, now, next_due));
        Ok(slot)
    }

    /// Monitors the processes in `cgroup` and below it, present and
    /// future, as one task (`spec.cgroup` is set to it).
    pub fn attach_cgroup(&mut self, mut spec: TaskSpec, cgroup: Cgroup) -> anyhow::Result<u32> {
        self.fit_history(&mut spec);
        let slot = self.reserve(&spec.profile, SlotRole::Cgroup)?;
        if let Err(err) = self.backend.attach_cgroup(slot, &cgroup) {
            self.unreserve(slot);
            return Err(self.explain(err));
        }
        spec.cgroup = Some(cgroup);
        let now = Instant::now();
        let next_due = self.next_due(now, Some(&spec.profile));
        self.insert(Task::new(spec, slot, now, next_due));
        Ok(slot)
    }

    /// The kernel side's losses so far, if the backend has a kernel side.
    pub fn kernel_health(&self) -> Option<KernelHealth> {
        self.backend.kernel_stats().map(KernelHealth::from)
    }

    /// Names the task a process (or cgroup) already belongs to.
    fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        if let Some(taken) = err.downcast_ref::<CgroupTaken>() {
            let owner = self.tasks.values().find(|task| task.slot == taken.slot);
            return match owner {
                Some(task) => anyhow::anyhow!(
                    "the cgroup already defines task {} (a cgroup defines one task)",
                    untrusted(&task.spec.task_id)
                ),
                None => err,
            };
        }
        let Some(owned) = err.downcast_ref::<AlreadyMember>() else {
            return err;
        };
        let owner = self
            .tasks
            .values()
            .find(|task| task.slot == owned.slot)
            .map(|task| task.spec.task_id.clone());
        match owner {
            Some(task_id) => anyhow::anyhow!(
                "PID {} already belongs to task {task_id}: a process belongs to one task \
                 (stop that task first, or attach an ancestor to include it in one)",
                owned.pid
            ),
            None if self
                .proplet_slot
                .as_ref()
                .is_some_and(|p| p.slot == owned.slot) =>
            {
                anyhow::anyhow!("PID {} is the proplet process", owned.pid)
            }
            None => err,
        }
    }

    /// Registers a task whose root process will be found at exec, by its
    /// module path (`proplet_<task_id>.wasm` in argv). A module process
    /// that exec'd before (kept provisionally) becomes its root at once.
    pub fn discover(&mut self, mut spec: TaskSpec) -> anyhow::Result<u32> {
        self.fit_history(&mut spec);
        if let Some(provisional) = self.provisional.remove(&spec.task_id) {
            self.backend.end_provisional(&spec.task_id);
            tracing::info!(
                "task {}: its process exec'd {:.1?} before the start message",
                untrusted(&spec.task_id),
                provisional.since.elapsed()
            );
            let next_due = self.next_due(Instant::now(), Some(&spec.profile));
            let mut task = Task::awaiting(spec, provisional.slot, provisional.since);
            task.discovered(provisional.since, next_due);
            let slot = task.slot;
            self.insert(task);
            return Ok(slot);
        }
        let slot = self.reserve(&spec.profile, SlotRole::Task)?;
        if let Err(err) = self.backend.discover(slot, &spec.task_id) {
            self.unreserve(slot);
            return Err(err);
        }
        self.insert(Task::awaiting(spec, slot, Instant::now()));
        Ok(slot)
    }

    /// Attaches the proplet process, whose slot in-process tasks share and
    /// whose descendants exec discovery accepts.
    pub fn attach_proplet(&mut self, pid: u32) -> anyhow::Result<()> {
        if let Some(shared) = &self.proplet_slot {
            if shared.pid == pid {
                return Ok(());
            }
            // The proplet restarted: its old threads are strangers now.
            let old = shared.slot;
            if !self.tasks.values().any(|task| task.slot == old) {
                self.unreserve(old);
            }
            self.proplet_slot = None;
        }
        let slot = self.reserve(&Preset::Intensive.profile(), SlotRole::Proplet)?;
        if let Err(err) = self.backend.attach(slot, pid) {
            self.unreserve(slot);
            return Err(self
                .explain(err)
                .context(format!("attaching the proplet process {pid}")));
        }
        self.proplet_slot = Some(SharedSlot { slot, pid });
        Ok(())
    }

    /// The PID of the attached proplet process.
    pub fn proplet_pid(&self) -> Option<u32> {
        self.proplet_slot.as_ref().map(|shared| shared.pid)
    }

    /// Reports a task through the proplet process, in which it runs
    /// (Propeller's in-process runtime): the figures are what that process
    /// consumed since now, flagged `"attribution":"proplet-process"`.
    pub fn attribute_to_proplet(&mut self, mut spec: TaskSpec, pid: u32) -> anyhow::Result<()> {
        self.attach_proplet(pid)?;
        let slot = self.proplet_slot.as_ref().map(|shared| shared.slot);
        let slot = slot.ok_or_else(|| anyhow::anyhow!("the proplet process is not attached"))?;
        self.backend.sample()?;
        let baseline = self.backend.totals(slot)?;
        spec.attribution = Some(PROPLET_PROCESS_ATTRIBUTION.to_owned());
        self.fit_history(&mut spec);
        let now = Instant::now();
        let next_due = self.next_due(now, Some(&spec.profile));
        let mut task = Task::new(spec, slot, now, next_due);
        task.set_baseline(baseline);
        self.insert(task);
        Ok(())
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
    /// forgotten and its processes are no longer charged to anyone.
    /// `None` if no such task.
    pub fn stop(&mut self, task_id: &str) -> Option<Ended> {
        let key = self.key_of(task_id)?;
        self.backend.forget_discovery(task_id);
        self.finish_keys(vec![key], EndReason::Stopped).pop()
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
        self.changed = true;
    }

    fn reserve(&mut self, profile: &MonitoringProfile, role: SlotRole) -> anyhow::Result<u32> {
        let slot = self.slots.allocate()?;
        if let Err(err) = self.backend.prepare(slot, profile, role) {
            self.slots.free(slot);
            return Err(err);
        }
        Ok(slot)
    }

    fn unreserve(&mut self, slot: u32) {
        self.backend.release(slot);
        self.slots.free(slot);
        self.changed = true;
    }

    /// The first due time of a task starting at `now`: the next point of
    /// its interval's grid.
    fn next_due(&self, now: Instant, profile: Option<&MonitoringProfile>) -> Instant {
        let interval = profile.map_or(Duration::from_secs(1), |p| p.interval);
        grid_after(self.origin, interval, now)
    }

    /// When the next round should run.
    pub fn next_wakeup(&self, now: Instant) -> Instant {
        let ending = self
            .tasks
            .values()
            .any(|task| task.processes_gone_since.is_some() || task.ending);
        let poll = if ending {
            now + ENDING_POLL
        } else if self.backend.event_fd().is_some() {
            // Events wake the loop: the clock is needed only for what
            // expires.
            self.next_expiry().unwrap_or(now + IDLE_WAKEUP)
        } else {
            now + self.poll_period
        };
        self.tasks
            .values()
            .filter(|task| !task.awaiting_discovery)
            .map(|task| task.next_due)
            .fold(poll, Instant::min)
    }

    /// When the next waiting task or provisional root expires.
    fn next_expiry(&self) -> Option<Instant> {
        let waiting = self.discovery_timeout.and_then(|timeout| {
            self.tasks
                .values()
                .filter(|task| task.awaiting_discovery)
                .map(|task| task.started() + timeout)
                .min()
        });
        let provisional = self
            .provisional
            .values()
            .map(|provisional| provisional.since + PROVISIONAL_HOLD)
            .min();
        // Just after the deadline, so that it has passed when we look.
        [waiting, provisional]
            .into_iter()
            .flatten()
            .min()
            .map(|at| at + Duration::from_millis(1))
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
                let next_due = grid_after(self.origin, task.spec.profile.interval, now);
                task.discovered(now, next_due);
            }
        }
        for (task_id, slot) in events.provisional {
            self.on_provisional(task_id, slot, now);
        }
        self.expire_provisional(now);
        let mut ended = self.expire_awaiting(now);
        let hinted: BTreeSet<u32> = events.maybe_ended.into_iter().collect();
        for task in self.tasks.values_mut() {
            // A cgroup's task outlives its processes.
            if hinted.contains(&task.slot) && task.spec.cgroup.is_none() {
                task.ending = true;
            }
        }
        let watched: BTreeSet<u32> = self
            .tasks
            .values()
            .filter(|task| !task.awaiting_discovery && task.spec.cgroup.is_none())
            .filter(|task| task.ending || task.processes_gone_since.is_some())
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
            self.follow_remade_cgroups(&due);
            let moment = self.sample();
            for key in due {
                self.emit(key, None, &moment);
                if let Some(task) = self.tasks.get_mut(&key) {
                    task.schedule_after(self.origin, now);
                }
            }
        }
        let ended_keys: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, task)| ended_slots.contains(&task.slot))
            .map(|(key, _)| *key)
            .collect();
        ended.extend(self.finish_keys(ended_keys, EndReason::Exited));
        self.sink.flush();
        ended
    }

    /// Reads every task's figures (one kernel pass) and returns when:
    /// the messages made from this reading all carry its time.
    fn sample(&mut self) -> Moment {
        if let Err(err) = self.backend.sample() {
            tracing::warn!("{err:#}");
        }
        Moment::now()
    }

    /// A cgroup removed and made again (systemd does so when a service
    /// restarts) is another cgroup to the kernel: the tasks due now whose
    /// cgroup's path names a new one attach it.
    fn follow_remade_cgroups(&mut self, due: &[u64]) {
        for key in due {
            let Some(task) = self.tasks.get(key) else {
                continue;
            };
            let Some(old) = &task.spec.cgroup else {
                continue;
            };
            let Ok(new) = Cgroup::resolve(&old.dir.to_string_lossy()) else {
                continue; // gone for now
            };
            if new.id == old.id {
                continue;
            }
            let slot = task.slot;
            match self.backend.attach_cgroup(slot, &new) {
                Ok(()) => {
                    tracing::info!(
                        "task {}: cgroup {} was made again; its processes are attached",
                        untrusted(&task.spec.task_id),
                        new.path
                    );
                    if let Some(task) = self.tasks.get_mut(key) {
                        task.spec.cgroup = Some(new);
                    }
                    self.changed = true;
                }
                Err(err) => tracing::warn!(
                    "task {}: cgroup {} was made again and cannot be attached: {err:#}",
                    untrusted(&task.spec.task_id),
                    new.path
                ),
            }
        }
    }

    /// A module process exec'd: its task was announced already (the start
    /// message raced the exec) or it waits for it.
    fn on_provisional(&mut self, task_id: String, slot: u32, now: Instant) {
        self.pooled = self.pooled.saturating_sub(1);
        self.refill_provisional_pool();
        let waiting = self
            .key_of(&task_id)
            .filter(|key| self.tasks.get(key).is_some_and(|t| t.awaiting_discovery));
        if let Some(key) = waiting {
            // The task takes the slot that counted its process.
            self.backend.end_provisional(&task_id);
            self.backend.forget_discovery(&task_id);
            let next_due = self
                .tasks
                .get(&key)
                .map(|task| grid_after(self.origin, task.spec.profile.interval, now));
            if let (Some(task), Some(next_due)) = (self.tasks.get_mut(&key), next_due) {
                let reserved = std::mem::replace(&mut task.slot, slot);
                task.discovered(now, next_due);
                tracing::info!("task {task_id}: its process appeared");
                self.unreserve(reserved);
            }
            return;
        }
        if self.has_task(&task_id) {
            // A second process with the module of a running task.
            self.backend.end_provisional(&task_id);
            self.unreserve(slot);
            return;
        }
        tracing::info!(
            "a module process for task {task_id:?} appeared before its start message; \
             kept for {PROVISIONAL_HOLD:?}"
        );
        self.provisional
            .insert(task_id, Provisional { slot, since: now });
        self.changed = true;
    }

    /// Forgets module processes whose task was never announced.
    fn expire_provisional(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .provisional
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.since) > PROVISIONAL_HOLD)
            .map(|(id, _)| id.clone())
            .collect();
        for task_id in expired {
            if let Some(provisional) = self.provisional.remove(&task_id) {
                tracing::info!(
                    "no start message for the module process of task {task_id:?} within \
                     {PROVISIONAL_HOLD:?}: not monitored"
                );
                self.backend.end_provisional(&task_id);
                self.unreserve(provisional.slot);
            }
        }
    }

    /// Keeps the kernel's pool of provisional slots full.
    fn refill_provisional_pool(&mut self) {
        let pool = PROVISIONAL_POOL.min(self.slots.capacity() as usize / 8);
        while self.keep_provisional && self.pooled < pool {
            let Ok(slot) = self.slots.allocate() else {
                return;
            };
            if let Err(err) = self.backend.add_provisional_slot(slot) {
                tracing::debug!("no provisional slots: {err:#}");
                self.slots.free(slot);
                self.keep_provisional = false;
                return;
            }
            self.pooled += 1;
        }
    }

    /// Ends the tasks whose process did not appear in time.
    fn expire_awaiting(&mut self, now: Instant) -> Vec<Ended> {
        let Some(timeout) = self.discovery_timeout else {
            return Vec::new();
        };
        let expired: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, task)| task.awaiting_discovery && task.waiting_since(now) > timeout)
            .map(|(key, _)| *key)
            .collect();
        for key in &expired {
            if let Some(task) = self.tasks.get(key) {
                tracing::warn!(
                    "task {}: no process exec'd its module within {timeout:?}; ending it",
                    task.spec.task_id
                );
                self.backend.forget_discovery(&task.spec.task_id.clone());
            }
        }
        self.finish_keys(expired, EndReason::NotFound)
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
        if !ended && totals.live_processes == 0 {
            self.backend.hasten_releases();
        }
        for task in self.tasks.values_mut().filter(|task| task.slot == slot) {
            if ended || totals.live_processes > 0 {
                task.processes_gone_since = None;
                task.ending = totals.live_processes == 0;
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
    pub fn finish(&mut self, slot: u32, reason: EndReason) -> Option<Ended> {
        let key = self
            .tasks
            .iter()
            .find(|(_, task)| task.slot == slot)
            .map(|(key, _)| *key)?;
        self.finish_keys(vec![key], reason).pop()
    }

    /// Final messages of several tasks, from one sample.
    fn finish_keys(&mut self, keys: Vec<u64>, reason: EndReason) -> Vec<Ended> {
        if keys.is_empty() {
            return Vec::new();
        }
        let moment = self.sample();
        let ended = keys
            .into_iter()
            .filter_map(|key| self.release_after_final(key, reason, &moment))
            .collect();
        self.sink.flush();
        ended
    }

    fn release_after_final(
        &mut self,
        key: u64,
        reason: EndReason,
        moment: &Moment,
    ) -> Option<Ended> {
        let slot = self.tasks.get(&key)?.slot;
        self.emit(key, Some(reason), moment);
        let task = self.tasks.remove(&key)?;
        let shared = self.proplet_slot.as_ref().is_some_and(|s| s.slot == slot);
        let still_used = self.tasks.values().any(|other| other.slot == slot);
        if !still_used && !shared {
            self.unreserve(slot);
        }
        Some(Ended {
            slot,
            task_id: task.spec.task_id,
        })
    }

    /// Final messages for every task (the agent is stopping for good).
    pub fn finish_all(&mut self) -> Vec<Ended> {
        let keys: Vec<u64> = self.tasks.keys().copied().collect();
        self.finish_keys(keys, EndReason::AgentStopped)
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

    /// Sends a task's message from the last sample; `end` makes it final.
    fn emit(&mut self, key: u64, end: Option<EndReason>, moment: &Moment) {
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
        let processes = if end.is_some() && totals.live_processes == 0 {
            ProcessSample::default()
        } else {
            self.backend.processes(slot)
        };
        let peers = self.backend.peers(slot);
        let source = self.backend.source();
        let Some(task) = self.tasks.get_mut(&key) else {
            return;
        };
        let observation = Observation {
            totals,
            processes,
            peers,
            host_memory_bytes: self.host_memory_bytes,
            container: task.spec.cgroup.as_ref().map(Cgroup::memory),
            at: moment.at,
            timestamp: moment.timestamp.clone(),
        };
        let message = task.next_message(&observation, source, end);
        let export = task.spec.profile.export_to_mqtt;
        let shared = self.proplet_slot.as_ref().is_some_and(|s| s.slot == slot);
        if shared {
            self.changed = true; // its number is kept in the registry only
        } else {
            let words = [task.seq(), task.last_cpu_ns(), moment.boottime_ns];
            self.backend.set_user_words(slot, words);
        }
        self.sink.send(&Outgoing::task(message, export));
    }
}

/// When a reading was taken, on each clock its messages need: read and
/// formatted once per round, not once per message.
pub(crate) struct Moment {
    at: Instant,
    /// RFC 3339, UTC, milliseconds.
    timestamp: String,
    boottime_ns: u64,
}

impl Moment {
    fn now() -> Self {
        Moment {
            at: Instant::now(),
            timestamp: message::rfc3339(SystemTime::now()),
            boottime_ns: boottime_ns(),
        }
    }
}

/// Nanoseconds since boot, suspend included (CLOCK_BOOTTIME): comparable
/// across agent restarts.
fn boottime_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: plain syscall on a valid struct.
        if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut time) } == 0 {
            return time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64;
        }
    }
    0
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
        cgroup: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_share_a_grid() {
        let origin = Instant::now();
        let at = |ms| origin + Duration::from_millis(ms);
        let second = Duration::from_secs(1);
        assert_eq!(grid_after(origin, second, at(0)), at(1000));
        assert_eq!(grid_after(origin, second, at(1)), at(1000));
        assert_eq!(grid_after(origin, second, at(1000)), at(2000));
        assert_eq!(grid_after(origin, second, at(2500)), at(3000));
        // A 10 s task started at 2.5 s is due with the 1 s tasks at 10 s.
        assert_eq!(grid_after(origin, 10 * second, at(2500)), at(10_000));
    }
}
