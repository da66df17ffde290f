//! What the local HTTP listener reports on besides the tasks' messages:
//! the agent's (or a run's) own health, refreshed once per round.

use crate::{
    engine::Engine,
    export::{
        http::HttpServer,
        latest::{Health, MqttHealth},
        mqtt::MqttStatus,
    },
};

/// The listener, and what it reports on besides the engine.
pub struct Served {
    pub server: HttpServer,
    pub mqtt: Option<MqttStatus>,
}

impl Served {
    /// The engine's own state as of this round, for `/metrics`.
    pub fn report(&self, engine: &mut Engine, proplet_id: &str, task_slots: u32) {
        self.server.latest().set_health(Health {
            tasks: engine.task_count() as u64,
            dropped_messages: engine.sink_mut().dropped(),
            kernel: engine.kernel_stats(),
            kernel_usage: engine.kernel_usage(),
            mqtt: self.mqtt.as_ref().map(mqtt_health),
            ..Health::starting(proplet_id, engine.source(), task_slots)
        });
    }
}

/// The exporter's state, read without waiting for it.
fn mqtt_health(status: &MqttStatus) -> MqttHealth {
    MqttHealth {
        connected: status.connected(),
        queued: status.queued(),
        queue_capacity: status.capacity(),
    }
}
