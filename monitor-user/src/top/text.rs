//! Batch mode's output: the task table as plain text, one table per
//! refresh, for scripts and tests (no terminal needed).
//!
//! Each table is a title line (`propmon top: N tasks, sorted by KEY, at
//! TIME`), a header line and one line per task, then a blank line.
//! Columns are separated by spaces; the task id comes last and may
//! contain spaces itself.

use std::fmt::Write as _;

use super::{
    format::{COLUMNS, cells},
    model::{Board, SortKey},
};

/// One table of the board as it stands.
pub fn table(board: &Board, key: SortKey, at: &str) -> String {
    let mut out = String::new();
    let tasks = match board.len() {
        1 => "1 task".to_owned(),
        n => format!("{n} tasks"),
    };
    let _ = writeln!(
        out,
        "propmon top: {tasks}, sorted by {}, at {at}",
        key.name()
    );
    let headers = COLUMNS.map(|column| column.header.to_owned());
    line(&mut out, &headers);
    for row in board.rows(key) {
        line(&mut out, &cells(&row));
    }
    out.push('\n');
    out
}

/// Numbers right-aligned in their column, the last column as it is.
fn line(out: &mut String, cells: &[String; COLUMNS.len()]) {
    let last = COLUMNS.len() - 1;
    for (index, (column, cell)) in COLUMNS.iter().zip(cells).enumerate() {
        if index == last {
            out.push_str(cell);
        } else {
            let _ = write!(out, "{cell:>width$} ", width = usize::from(column.width));
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::latest::tests::message;

    #[test]
    fn a_table_has_a_title_headers_and_a_line_per_task() {
        let mut board = Board::default();
        board.record([message("web 1", 1, false), message("db", 1, false)]);
        let text = table(&board, SortKey::Memory, "2026-01-01T00:00:00.000Z");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "propmon top: 2 tasks, sorted by memory, at 2026-01-01T00:00:00.000Z"
        );
        assert_eq!(
            lines[1],
            "  CPU%     MEM  READ/s WRITE/s    RX/s    TX/s PROCS   THR   STATE TASK"
        );
        assert_eq!(
            lines[2],
            "     -    4.0K       -       -       -       -     1     - running db"
        );
        assert!(lines[3].ends_with(" running web 1"), "{}", lines[3]);
        assert_eq!(lines[4], "", "a blank line after each table");
        assert_eq!(lines.len(), 5);
    }
}
