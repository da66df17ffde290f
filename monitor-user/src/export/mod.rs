//! Where messages go: stdout as JSON lines (`stdout`), an MQTT broker
//! (`mqtt`), the HTTP listener (`http`), which serves the latest of them
//! (`latest`) as Prometheus metrics (`prometheus`) and JSON (`api`).

pub mod api;
pub mod http;
pub mod latest;
pub mod mqtt;
pub mod prometheus;
pub mod stdout;

use std::{
    cell::OnceCell,
    sync::atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;

use crate::message::{PropletMetricsMessage, TaskMetricsMessage};

/// The length of the last message made into JSON.
static LAST_JSON_BYTES: AtomicUsize = AtomicUsize::new(1024);

/// A message ready to leave the agent. Its JSON is made once, by the
/// first sink that needs it, and shared by the others: stdout and MQTT
/// send the same bytes.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub message: Message,
    json: OnceCell<Bytes>,
}

#[derive(Clone, Debug)]
pub enum Message {
    /// A task's message; `export` is its profile's `export_to_mqtt`:
    /// `false` keeps it local (stdout only).
    Task {
        message: Box<TaskMetricsMessage>,
        export: bool,
    },
    Proplet(PropletMetricsMessage),
}

impl Outgoing {
    pub fn task(message: TaskMetricsMessage, export: bool) -> Self {
        Self::new(Message::Task {
            message: Box::new(message),
            export,
        })
    }

    pub fn proplet(message: PropletMetricsMessage) -> Self {
        Self::new(Message::Proplet(message))
    }

    fn new(message: Message) -> Self {
        Outgoing {
            message,
            json: OnceCell::new(),
        }
    }

    /// The task's message, if it is one.
    pub fn task_message(&self) -> Option<&TaskMetricsMessage> {
        match &self.message {
            Message::Task { message, .. } => Some(message),
            Message::Proplet(_) => None,
        }
    }

    /// The message as JSON, without a line end.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            // Room for a message like the last one: a buffer grown from
            // serde_json's 128 bytes would be copied three times.
            let last = LAST_JSON_BYTES.load(Ordering::Relaxed);
            let mut json = Vec::with_capacity(last + last / 16);
            match &self.message {
                Message::Task { message, .. } => serde_json::to_writer(&mut json, message),
                Message::Proplet(message) => serde_json::to_writer(&mut json, message),
            }
            .expect("messages always serialise");
            LAST_JSON_BYTES.store(json.len(), Ordering::Relaxed);
            json.into()
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::latest::tests::message;

    #[test]
    fn the_json_is_made_once_and_is_serde_json_s() {
        let task = message("t1", 7, false);
        let outgoing = Outgoing::task(task.clone(), true);
        let first = outgoing.json().clone();
        assert_eq!(first, serde_json::to_vec(&task).unwrap());
        // Shared with every later caller, not made again.
        assert_eq!(outgoing.json().as_ptr(), first.as_ptr());
        assert_eq!(outgoing.task_message(), Some(&task));
    }
}
