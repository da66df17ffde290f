//! Where messages go: stdout as JSON lines (`stdout`), an MQTT broker
//! (`mqtt`), the HTTP listener (`http`), which serves the latest of them
//! (`latest`) as Prometheus metrics (`prometheus`) and JSON (`api`).

pub mod api;
pub mod http;
pub mod latest;
pub mod mqtt;
pub mod prometheus;
pub mod stdout;

use crate::message::{PropletMetricsMessage, TaskMetricsMessage};

/// A message ready to leave the agent.
#[derive(Clone, Debug)]
pub enum Outgoing {
    /// A task's message; `export` is its profile's `export_to_mqtt`:
    /// `false` keeps it local (stdout only).
    Task {
        message: Box<TaskMetricsMessage>,
        export: bool,
    },
    Proplet(PropletMetricsMessage),
}

/// A destination for messages. `send` must never block the sampling loop.
pub trait Sink: Send {
    fn send(&mut self, message: &Outgoing);

    /// The messages sent so far are complete for now (the end of a round):
    /// a sink that batches writes them out.
    fn flush(&mut self) {}

    /// Messages this sink had to drop (e.g. a full queue), since start.
    fn dropped(&self) -> u64 {
        0
    }
}

/// Sends every message to each of several sinks.
pub struct Fanout(pub Vec<Box<dyn Sink>>);

impl Sink for Fanout {
    fn send(&mut self, message: &Outgoing) {
        for sink in &mut self.0 {
            sink.send(message);
        }
    }

    fn flush(&mut self) {
        for sink in &mut self.0 {
            sink.flush();
        }
    }

    fn dropped(&self) -> u64 {
        self.0.iter().map(|sink| sink.dropped()).sum()
    }
}
