//! The kernel programs' log records (aya-log), to the agent's log: each
//! record becomes a tracing event under the target `propmon::kernel`, at
//! its own level, its text starting with `kernel: `. The programs log losses only, at most one line a minute
//! per kind (`monitor-ebpf/src/diag.rs`), so nothing is limited here.

use log::{Level, Log, Metadata, Record};

/// The `log::Log` that aya-log writes the records to.
pub struct KernelLog;

impl Log for KernelLog {
    fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        let text = record.args();
        match record.level() {
            Level::Error => tracing::error!(target: "propmon::kernel", "kernel: {text}"),
            Level::Warn => tracing::warn!(target: "propmon::kernel", "kernel: {text}"),
            Level::Info => tracing::info!(target: "propmon::kernel", "kernel: {text}"),
            Level::Debug => tracing::debug!(target: "propmon::kernel", "kernel: {text}"),
            Level::Trace => tracing::trace!(target: "propmon::kernel", "kernel: {text}"),
        }
    }

    fn flush(&self) {}
}
