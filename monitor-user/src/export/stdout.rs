//! JSON lines on stdout: every message, exported or local.

use std::io::{self, Write as _};

use super::{Outgoing, Sink};

/// A closed stdout (e.g. `| head`) stops the output, not the agent.
#[derive(Debug, Default)]
pub struct StdoutSink {
    closed: bool,
}

impl Sink for StdoutSink {
    fn send(&mut self, message: &Outgoing) {
        if self.closed {
            return;
        }
        let line = match message {
            Outgoing::Task { message, .. } => serde_json::to_string(message),
            Outgoing::Proplet(message) => serde_json::to_string(message),
        }
        .expect("messages always serialise");
        let mut stdout = io::stdout().lock();
        if let Err(err) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
            tracing::warn!("stdout closed ({err}): no more metrics will be written there");
            self.closed = true;
        }
    }
}
