//! The latest message of every live task, and the agent's health, kept for
//! the HTTP listener (`/metrics`, `/api/v1/tasks`).
//!
//! The sampling loop writes through [`LatestSink`] (one short lock per
//! message) and [`Latest::set_health`] (once per round); the listener's
//! thread takes a [`Snapshot`] (the lock held only to copy pointers) and
//! builds its responses from it without the lock. What is kept is bounded
//! by the tasks monitored: a task's entry goes with its final message.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use monitor_common::KernelStats;

use super::{Outgoing, Sink};
use crate::{
    collect::KernelUsage,
    message::{Source, TaskMetricsMessage},
};

/// The agent's own state, as of its last round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub proplet_id: String,
    pub source: Source,
    /// Tasks monitored.
    pub tasks: u64,
    /// Tasks the agent can monitor at once (`--max-tasks`).
    pub task_slots: u64,
    /// Messages dropped since start (a full export queue, a broker refusal).
    pub dropped_messages: u64,
    /// The kernel side's counters of what it could not record (eBPF only).
    pub kernel: Option<KernelStats>,
    /// The kernel side's programs and maps (eBPF only).
    pub kernel_usage: Option<KernelUsage>,
    /// The MQTT exporter, when a broker is configured.
    pub mqtt: Option<MqttHealth>,
}

/// The MQTT exporter's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MqttHealth {
    pub connected: bool,
    /// Messages waiting to be handed to the broker.
    pub queued: u64,
    /// Most messages the queue keeps (`--mqtt-queue-size`).
    pub queue_capacity: u64,
}

impl Health {
    /// Before the first round: no task, nothing dropped or lost.
    pub fn starting(proplet_id: &str, source: Source, task_slots: u32) -> Self {
        Health {
            proplet_id: proplet_id.to_owned(),
            source,
            tasks: 0,
            task_slots: u64::from(task_slots),
            dropped_messages: 0,
            kernel: None,
            kernel_usage: None,
            mqtt: None,
        }
    }
}

/// What the listener serves, at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The latest message of every task that has not ended, by task id.
    pub tasks: Vec<Arc<TaskMetricsMessage>>,
    pub health: Health,
    /// Whether `/metrics` shows each task's peers (`--metrics-peers`).
    pub peer_series: bool,
}

struct State {
    tasks: BTreeMap<String, Arc<TaskMetricsMessage>>,
    health: Health,
    peer_series: bool,
}

/// Shared between the sampling loop and the listener.
#[derive(Clone)]
pub struct Latest(Arc<Mutex<State>>);

impl Latest {
    pub fn new(health: Health) -> Self {
        Latest(Arc::new(Mutex::new(State {
            tasks: BTreeMap::new(),
            health,
            peer_series: false,
        })))
    }

    /// Per-peer series in `/metrics` (off unless asked for: they multiply
    /// a task's series by its listed peers).
    pub fn with_peer_series(self, on: bool) -> Self {
        self.lock().peer_series = on;
        self
    }

    /// The sink that keeps every task's latest message here.
    pub fn sink(&self) -> LatestSink {
        LatestSink(self.clone())
    }

    pub fn set_health(&self, health: Health) {
        self.lock().health = health;
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        Snapshot {
            tasks: state.tasks.values().cloned().collect(),
            health: state.health.clone(),
            peer_series: state.peer_series,
        }
    }

    /// The latest message of one task, if it has not ended.
    pub fn task(&self, task_id: &str) -> Option<Arc<TaskMetricsMessage>> {
        self.lock().tasks.get(task_id).cloned()
    }

    /// A panic elsewhere while the lock was held leaves consistent data
    /// (every write is a single insert or assignment): keep serving.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps the latest message of every task, exported or local (as stdout
/// does); a task's final message removes it.
pub struct LatestSink(Latest);

impl Sink for LatestSink {
    fn send(&mut self, message: &Outgoing) {
        let Some(message) = message.task_message() else {
            return;
        };
        let mut state = self.0.lock();
        if message.is_final {
            state.tasks.remove(&message.task_id);
        } else {
            let latest = Arc::new(TaskMetricsMessage::clone(message));
            state.tasks.insert(message.task_id.clone(), latest);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::message::{Details, TaskMetrics};

    pub fn health() -> Health {
        Health {
            proplet_id: "edge-7".into(),
            source: Source::Ebpf,
            tasks: 1,
            task_slots: 4096,
            dropped_messages: 0,
            kernel: None,
            kernel_usage: None,
            mqtt: None,
        }
    }

    pub fn message(task_id: &str, seq: u64, is_final: bool) -> TaskMetricsMessage {
        TaskMetricsMessage {
            task_id: task_id.into(),
            proplet_id: "edge-7".into(),
            metrics: TaskMetrics {
                cpu_time_ns: Some(1_500_000_000),
                memory_bytes: Some(4096),
                process_count: 1,
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                ..Default::default()
            },
            aggregated: None,
            details: Details::default(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            source: Source::Ebpf,
            seq,
            is_final,
            end_reason: None,
            attribution: None,
        }
    }

    fn send(sink: &mut LatestSink, message: TaskMetricsMessage) {
        sink.send(&Outgoing::task(message, false));
    }

    #[test]
    fn keeps_the_latest_message_until_the_final_one() {
        let latest = Latest::new(health());
        let mut sink = latest.sink();
        send(&mut sink, message("b", 1, false));
        send(&mut sink, message("a", 1, false));
        send(&mut sink, message("a", 2, false));
        let snapshot = latest.snapshot();
        let seen: Vec<(&str, u64)> = snapshot
            .tasks
            .iter()
            .map(|m| (m.task_id.as_str(), m.seq))
            .collect();
        assert_eq!(seen, [("a", 2), ("b", 1)], "sorted by task id, latest only");
        send(&mut sink, message("a", 3, true));
        assert!(latest.task("a").is_none(), "gone after its final message");
        assert_eq!(latest.task("b").unwrap().seq, 1);
        // A snapshot taken before stays as it was.
        assert_eq!(snapshot.tasks.len(), 2);
    }
}
