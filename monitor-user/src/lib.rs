//! propmon: per-task resource accounting from the kernel, published in
//! Propeller's metrics format.
//!
//! - `engine`: the sampling loop over every task, one backend, one output.
//! - `tasks`: a monitored task and its sampling state; `history` its window.
//! - `profiles`: Propeller's monitoring profiles (what to collect, how often).
//! - `collect`: where the numbers come from (`ebpf` in the kernel, `procfs`).
//! - `message`: the JSON messages we emit, field for field; `export` sends them.
//! - `proplet`: the agent's own metrics; `propeller`: the Manager's control messages.
//! - `state`: the task registry a restarted agent resumes from.
//! - `input`: bounds on what users and messages give (files, ids, log text).
//! - `top`: the table of `propmon top`, its terminal view and API client.
//! - `cli`: one module per subcommand.

pub mod cli;
pub mod collect;
pub mod duration;
pub mod engine;
pub mod export;
pub mod history;
pub mod input;
pub mod message;
pub mod profiles;
pub mod propeller;
pub mod proplet;
#[cfg(unix)]
pub mod state;
pub mod tasks;
pub mod top;
