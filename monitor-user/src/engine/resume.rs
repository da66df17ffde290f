//! Taking up the tasks a previous agent left (`--state-dir`): the engine's
//! registry as saved, and its restoration against the kernel state that
//! outlived the agent.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use super::{Engine, Provisional, SharedSlot, boottime_ns, grid_after};
use crate::{
    collect::{Backend, cgroup::Cgroup},
    profiles::MonitoringProfile,
    state::{Registry, SavedProvisional, SavedSlot, SavedTask},
    tasks::{Resumed, Task, TaskSpec},
};

impl Engine {
    /// What a restarted agent needs to take up the tasks.
    pub fn registry(&self) -> Registry {
        let generation = |slot| self.backend.live_generation(slot).unwrap_or(0);
        let now = (Instant::now(), SystemTime::now());
        Registry {
            version: 0,
            tasks: self
                .tasks
                .values()
                .map(|task| SavedTask {
                    task_id: task.spec.task_id.clone(),
                    proplet_id: task.spec.proplet_id.clone(),
                    profile: profile_value(&task.spec.profile),
                    attribution: task.spec.attribution.clone(),
                    slot: task.slot,
                    generation: generation(task.slot),
                    awaiting_discovery: task.awaiting_discovery,
                    started_unix_ms: unix_ms(now, task.started()),
                    seq: task.seq(),
                    baseline: task.baseline(),
                    cgroup: task.spec.cgroup.as_ref().map(|cgroup| cgroup.dir.clone()),
                })
                .collect(),
            proplet: self.proplet_slot.as_ref().map(|shared| SavedSlot {
                slot: shared.slot,
                generation: generation(shared.slot),
                pid: shared.pid,
            }),
            provisional: self
                .provisional
                .iter()
                .map(|(task_id, provisional)| SavedProvisional {
                    task_id: task_id.clone(),
                    slot: provisional.slot,
                    generation: generation(provisional.slot),
                })
                .collect(),
        }
    }

    /// Takes up the tasks a previous agent saved, those whose kernel state
    /// is still there; returns how many.
    pub fn restore(&mut self, registry: Registry) -> usize {
        for slot in self.backend.drain_provisional_pool() {
            self.slots.take(slot);
            self.unreserve(slot);
        }
        let live = |backend: &dyn Backend, slot: u32, generation: u32| {
            backend.live_generation(slot) == Some(generation)
        };
        if let Some(saved) = registry.proplet
            && live(self.backend.as_ref(), saved.slot, saved.generation)
        {
            self.slots.take(saved.slot);
            self.backend.adopt_slot(saved.slot);
            self.proplet_slot = Some(SharedSlot {
                slot: saved.slot,
                pid: saved.pid,
            });
        }
        for saved in registry.provisional {
            if live(self.backend.as_ref(), saved.slot, saved.generation) {
                self.slots.take(saved.slot);
                self.backend.adopt_slot(saved.slot);
                let since = Instant::now();
                let slot = saved.slot;
                self.provisional
                    .insert(saved.task_id, Provisional { slot, since });
            }
        }
        let _ = self.sample();
        let mut restored = 0;
        for saved in registry.tasks {
            if !live(self.backend.as_ref(), saved.slot, saved.generation) {
                tracing::warn!(
                    "task {}: its kernel state is gone (the machine restarted?); not resumed",
                    saved.task_id
                );
                continue;
            }
            match self.resume(saved) {
                Ok(()) => restored += 1,
                Err(err) => tracing::warn!("{err:#}"),
            }
        }
        self.refill_provisional_pool();
        self.changed = true;
        restored
    }

    fn resume(&mut self, saved: SavedTask) -> anyhow::Result<()> {
        let profile = crate::profiles::parse_profile_value(&saved.profile)
            .map_err(|err| anyhow::anyhow!("task {}: saved profile: {err}", saved.task_id))?
            .profile;
        let shared = self
            .proplet_slot
            .as_ref()
            .is_some_and(|s| s.slot == saved.slot);
        if !shared {
            self.slots.take(saved.slot);
            self.backend.adopt_slot(saved.slot);
        }
        if saved.awaiting_discovery {
            self.backend.discover(saved.slot, &saved.task_id)?;
        }
        let cgroup = match &saved.cgroup {
            Some(dir) => match self.resume_cgroup(saved.slot, &saved.task_id, dir) {
                Ok(cgroup) => Some(cgroup),
                Err(err) => {
                    // Its processes are nobody's from now on.
                    self.unreserve(saved.slot);
                    return Err(err);
                }
            },
            None => None,
        };
        let now = Instant::now();
        let [seq, cpu_ns, sampled_at] = self.backend.user_words(saved.slot);
        let mut previous = (now, self.backend.totals(saved.slot)?);
        let mut last_seq = saved.seq;
        if !shared && seq >= saved.seq && sampled_at > 0 {
            last_seq = seq;
            let ago = Duration::from_nanos(boottime_ns().saturating_sub(sampled_at));
            previous.0 = now.checked_sub(ago).unwrap_or(now);
            previous.1.cpu_ns = cpu_ns;
        }
        let ago = unix_ms((now, SystemTime::now()), now).saturating_sub(saved.started_unix_ms);
        let started = now.checked_sub(Duration::from_millis(ago)).unwrap_or(now);
        let spec = TaskSpec {
            task_id: saved.task_id,
            proplet_id: saved.proplet_id,
            profile,
            attribution: saved.attribution,
            cgroup,
        };
        let next_due = grid_after(self.origin, spec.profile.interval, now);
        self.insert(Task::resume(Resumed {
            spec,
            slot: saved.slot,
            started,
            seq: last_seq,
            previous,
            awaiting_discovery: saved.awaiting_discovery,
            baseline: saved.baseline,
            next_due,
        }));
        Ok(())
    }
}

impl Engine {
    /// The cgroup of a resumed task, attached again: processes that moved
    /// in while no agent ran are members already (the kernel followed
    /// them), and a cgroup made again meanwhile has a new id.
    fn resume_cgroup(&mut self, slot: u32, task_id: &str, dir: &Path) -> anyhow::Result<Cgroup> {
        let given = dir.to_string_lossy();
        let cgroup = Cgroup::resolve(&given)
            .map_err(|err| anyhow::anyhow!("task {task_id}: its cgroup: {err}"))?;
        self.backend.attach_cgroup(slot, &cgroup).map_err(|err| {
            anyhow::anyhow!("task {task_id}: attaching its cgroup again: {err:#}")
        })?;
        Ok(cgroup)
    }
}

/// A profile as the JSON a start message would carry.
fn profile_value(profile: &MonitoringProfile) -> serde_json::Value {
    let mut value = serde_json::to_value(profile).unwrap_or_default();
    value["interval"] = format!("{}ms", profile.interval.as_millis()).into();
    value
}

/// The wall-clock time of `at`, in ms since the Unix epoch, given the
/// pair `now` of the monotonic and wall clocks.
fn unix_ms(now: (Instant, SystemTime), at: Instant) -> u64 {
    let wall = now.1 - now.0.saturating_duration_since(at);
    wall.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
