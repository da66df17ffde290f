//! JSON lines on stdout: every message, exported or local.
//!
//! A round's lines are written together, in one `write` when they fit
//! [`BATCH_BYTES`]: at 1,000 tasks a line each would be 1,000 system
//! calls a second.

use std::io::{self, Write as _};

use super::{Outgoing, Sink};

/// Lines kept before they are written even in the middle of a round.
const BATCH_BYTES: usize = 64 * 1024;

/// A closed stdout (e.g. `| head`) stops the output, not the agent.
#[derive(Debug, Default)]
pub struct StdoutSink {
    closed: bool,
    /// Lines not written yet; its allocation is kept from round to round.
    pending: Vec<u8>,
}

impl StdoutSink {
    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if !self.closed {
            let mut stdout = io::stdout().lock();
            if let Err(err) = stdout
                .write_all(&self.pending)
                .and_then(|()| stdout.flush())
            {
                tracing::warn!("stdout closed ({err}): no more metrics will be written there");
                self.closed = true;
            }
        }
        self.pending.clear();
    }
}

impl Sink for StdoutSink {
    fn send(&mut self, message: &Outgoing) {
        if self.closed {
            return;
        }
        self.pending.extend_from_slice(message.json());
        self.pending.push(b'\n');
        if self.pending.len() >= BATCH_BYTES {
            self.write_pending();
        }
    }

    fn flush(&mut self) {
        self.write_pending();
    }
}

impl Drop for StdoutSink {
    fn drop(&mut self) {
        self.write_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::latest::tests::message;

    #[test]
    fn a_line_is_the_message_s_json() {
        let outgoing = Outgoing::task(message("t1", 1, false), false);
        let mut sink = StdoutSink::default();
        sink.send(&outgoing);
        sink.send(&outgoing);
        let line = [&outgoing.json()[..], b"\n"].concat();
        assert_eq!(sink.pending, [&line[..], &line[..]].concat());
        sink.pending.clear(); // not written to the test's stdout
    }
}
