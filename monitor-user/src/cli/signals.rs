//! SIGINT and SIGTERM (Ctrl-C elsewhere), as one async stream.

use std::fmt;

/// Why the agent is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Interrupt,
    Terminate,
}

impl Stop {
    /// The conventional exit status after this signal (128 + number).
    pub fn exit_code(self) -> u8 {
        match self {
            Stop::Interrupt => 128 + 2,
            Stop::Terminate => 128 + 15,
        }
    }
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stop::Interrupt => "SIGINT",
            Stop::Terminate => "SIGTERM",
        })
    }
}

#[cfg(unix)]
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl StopSignals {
    pub fn install() -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
        })
    }

    pub async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.interrupt.recv() => Stop::Interrupt,
            _ = self.terminate.recv() => Stop::Terminate,
        }
    }
}

#[cfg(not(unix))]
pub struct StopSignals;

#[cfg(not(unix))]
impl StopSignals {
    pub fn install() -> anyhow::Result<Self> {
        Ok(StopSignals)
    }

    pub async fn recv(&mut self) -> Stop {
        let _ = tokio::signal::ctrl_c().await;
        Stop::Interrupt
    }
}

/// Passes the stop request on to a child process.
pub fn forward(child: &mut tokio::process::Child, stop: Stop) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        use nix::{sys::signal, unistd::Pid};
        let signal = match stop {
            Stop::Interrupt => signal::Signal::SIGINT,
            Stop::Terminate => signal::Signal::SIGTERM,
        };
        let _ = signal::kill(Pid::from_raw(pid as i32), signal);
    }
    #[cfg(not(unix))]
    {
        let _ = stop;
        let _ = child.start_kill();
    }
}
