//! propmon: per-task resource accounting from the kernel, published in
//! Propeller's metrics format.
//!
//! - `tasks`: the registry of monitored tasks and their sampling state.
//! - `profiles`: Propeller's monitoring profiles (what to collect, how often).
//! - `collect`: where the numbers come from (`ebpf` in the kernel, `procfs`).
//! - `message`: the JSON messages we emit, field for field.
//! - `cli`: one module per subcommand.

pub mod cli;
pub mod collect;
pub mod duration;
pub mod message;
pub mod profiles;
pub mod tasks;
