//! How figures are written, and the table's columns: shared by batch mode
//! and the terminal view, so that both show the same text.
//!
//! Sizes use binary units written short, as `top` does: `K`, `M`, `G`,
//! `T`, `P` are KiB, MiB, GiB, TiB, PiB; a rate column holds bytes per
//! second (its header ends in `/s`). `-` is a figure not collected, or
//! not known yet (a rate needs two messages).

use super::model::Row;
use crate::input::untrusted_up_to;

/// Shown when a figure is not collected or not known yet.
pub const UNKNOWN: &str = "-";

const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];

/// `512B`, `1.5K`, `23.4M`, `1.0G`.
pub fn bytes(bytes: u64) -> String {
    bytes_f64(bytes as f64)
}

fn bytes_f64(bytes: f64) -> String {
    if !bytes.is_finite() || bytes < 0.0 {
        return UNKNOWN.to_owned();
    }
    if bytes < 1024.0 {
        return format!("{}B", bytes.round() as u64);
    }
    let mut value = bytes / 1024.0;
    for unit in UNITS {
        // 1023.96 would be written 1024.0: the next unit reads better.
        if value < 1023.95 || unit == "P" {
            return format!("{value:.1}{unit}");
        }
        value /= 1024.0;
    }
    unreachable!("the loop returns at its last unit")
}

/// A bytes-per-second figure, without the `/s` its header carries.
pub fn rate(rate: Option<f64>) -> String {
    rate.map_or_else(|| UNKNOWN.to_owned(), bytes_f64)
}

/// A bytes-per-second figure with its unit, for the details view.
pub fn rate_per_second(rate: Option<f64>) -> String {
    match rate {
        Some(r) if r.is_finite() && r >= 0.0 => format!("{}/s", bytes_f64(r)),
        _ => UNKNOWN.to_owned(),
    }
}

/// CPU or memory share, one decimal.
pub fn percent(percent: Option<f64>) -> String {
    match percent {
        Some(p) if p.is_finite() => format!("{p:.1}"),
        _ => UNKNOWN.to_owned(),
    }
}

pub fn count(count: Option<u64>) -> String {
    count.map_or_else(|| UNKNOWN.to_owned(), |n| n.to_string())
}

/// Text from a message (a task id, a peer) as a terminal may show it:
/// control characters escaped, so that an agent's data cannot move the
/// cursor or change colours.
pub fn shown(text: &str) -> String {
    untrusted_up_to(text, 255).to_string()
}

/// A column of the task table.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub header: &'static str,
    /// Characters it takes; the last column takes what is left.
    pub width: u16,
}

/// The task table's columns, in order; the task id comes last because it
/// is the only one of unbounded length.
pub const COLUMNS: [Column; 10] = [
    Column {
        header: "CPU%",
        width: 6,
    },
    Column {
        header: "MEM",
        width: 7,
    },
    Column {
        header: "READ/s",
        width: 7,
    },
    Column {
        header: "WRITE/s",
        width: 7,
    },
    Column {
        header: "RX/s",
        width: 7,
    },
    Column {
        header: "TX/s",
        width: 7,
    },
    Column {
        header: "PROCS",
        width: 5,
    },
    Column {
        header: "THR",
        width: 5,
    },
    Column {
        header: "STATE",
        width: 7,
    },
    Column {
        header: "TASK",
        width: 0,
    },
];

/// A row's cells, one per column of [`COLUMNS`].
pub fn cells(row: &Row) -> [String; 10] {
    [
        percent(row.cpu_percent),
        row.memory_bytes.map_or_else(|| UNKNOWN.to_owned(), bytes),
        rate(row.disk_read),
        rate(row.disk_write),
        rate(row.net_rx),
        rate(row.net_tx),
        row.processes.to_string(),
        count(row.threads),
        row.status.name().to_owned(),
        shown(&row.task_id),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_short_binary_units() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(1024), "1.0K");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(6 * 1024 * 1024 + 104_858), "6.1M");
        assert_eq!(bytes(1024 * 1024 - 1), "1.0M");
        assert_eq!(bytes(3 << 30), "3.0G");
        assert_eq!(bytes(u64::MAX), "16384.0P");
        for n in [0, 1, 1023, 1024, 1 << 20, 5 << 30, u64::MAX / 1024] {
            assert!(bytes(n).len() <= 7 || n > 1 << 50, "{n}: {}", bytes(n));
        }
    }

    #[test]
    fn rates_and_shares_show_unknown_as_a_dash() {
        assert_eq!(rate(None), "-");
        assert_eq!(rate(Some(0.0)), "0B");
        assert_eq!(rate(Some(1536.0)), "1.5K");
        assert_eq!(rate(Some(f64::NAN)), "-");
        assert_eq!(rate(Some(-1.0)), "-");
        assert_eq!(rate_per_second(Some(2048.0)), "2.0K/s");
        assert_eq!(rate_per_second(None), "-");
        assert_eq!(percent(Some(99.56)), "99.6");
        assert_eq!(percent(None), "-");
        assert_eq!(percent(Some(f64::INFINITY)), "-");
        assert_eq!(count(Some(3)), "3");
        assert_eq!(count(None), "-");
    }

    #[test]
    fn text_from_messages_cannot_drive_the_terminal() {
        assert_eq!(shown("web-1"), "web-1");
        assert_eq!(shown("a\u{1b}[2Jb\n"), r"a\u{1b}[2Jb\n");
    }
}
