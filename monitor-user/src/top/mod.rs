//! `propmon top`'s table, apart from where its figures come from (the
//! subcommand, `cli::top`) and from the terminal:
//!
//! - `model`: tasks, rates between two messages of a task, sort keys, a
//!   task's details; no terminal.
//! - `format`: how figures are written, and the columns.
//! - `text`: batch mode's plain tables.
//! - `tui`: the terminal view (drawing, keys); `terminal`: the terminal's
//!   set-up and restoring, whatever happens.
//! - `client`: an agent's local API, for `--connect`.

pub mod client;
pub mod format;
pub mod model;
pub mod terminal;
pub mod text;
pub mod tui;
