//! Input from users and from the Manager, kept within bounds: files read
//! with a size cap, ids checked where they enter, and untrusted text made
//! safe before it reaches a log line. README's "Limits" lists every bound.

use std::{
    fmt::{self, Write as _},
    fs::File,
    io::Read as _,
    path::Path,
};

use anyhow::{Context as _, bail};

/// Largest profile or configuration file read: far above any real one,
/// and small enough that `/dev/zero` or a wrong path costs nothing.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Longest id (task, proplet, domain, channel), in bytes. The Manager
/// stores at most 36 characters; operators' own ids get more room.
pub const MAX_ID_BYTES: usize = 255;
/// Characters of untrusted text shown in a log line.
pub const SHOWN_CHARS: usize = 64;

/// Reads a text file of at most [`MAX_FILE_BYTES`]. Regular files and
/// pipes (`<(...)`, `/dev/stdin`) are read; devices and directories are
/// refused before any read.
pub fn read_text_file(path: &Path) -> anyhow::Result<String> {
    let file = File::open(path)?;
    let kind = file.metadata()?.file_type();
    if !(kind.is_file() || is_fifo(&kind)) {
        bail!("not a regular file ({})", describe(&kind));
    }
    let mut bytes = Vec::new();
    // One byte more than allowed tells "exactly at the limit" from "over it".
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .context("reading")?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        bail!("larger than the limit of {} MiB", MAX_FILE_BYTES >> 20);
    }
    String::from_utf8(bytes).map_err(|err| {
        anyhow::anyhow!(
            "not UTF-8 text (byte {} is not)",
            err.utf8_error().valid_up_to()
        )
    })
}

#[cfg(unix)]
fn is_fifo(kind: &std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    kind.is_fifo()
}

#[cfg(not(unix))]
fn is_fifo(_: &std::fs::FileType) -> bool {
    false
}

fn describe(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// Why an id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long; the limit is {MAX_ID_BYTES}")]
    TooLong { what: &'static str, len: usize },
    #[error("{what} \"{shown}\" contains a control character")]
    Control { what: &'static str, shown: String },
    #[error(
        "{what} \"{shown}\" contains {reserved:?}, which MQTT topics reserve \
         ('/' separates levels, '+' and '#' are wildcards)"
    )]
    TopicReserved {
        what: &'static str,
        shown: String,
        reserved: char,
    },
}

/// Checks a task id (`what` names it in the error) and returns it without
/// surrounding blanks: 1 to [`MAX_ID_BYTES`] bytes, no control characters.
pub fn check_task_id<'a>(what: &'static str, id: &'a str) -> Result<&'a str, IdError> {
    let id = id.trim();
    if id.is_empty() {
        return Err(IdError::Empty { what });
    }
    if id.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong {
            what,
            len: id.len(),
        });
    }
    if id.chars().any(char::is_control) {
        return Err(IdError::Control {
            what,
            shown: untrusted(id).to_string(),
        });
    }
    Ok(id)
}

/// Checks an id that becomes an MQTT topic level (domain, channel) or is
/// matched against one (proplet): a task id's rules, and none of the
/// characters topics reserve, which would make a filter or a broken topic
/// that silently matches nothing.
pub fn check_topic_level<'a>(what: &'static str, id: &'a str) -> Result<&'a str, IdError> {
    check_task_id(what, id)?;
    if let Some(reserved) = id.chars().find(|c| matches!(c, '/' | '+' | '#')) {
        return Err(IdError::TopicReserved {
            what,
            shown: untrusted(id).to_string(),
            reserved,
        });
    }
    Ok(id)
}

/// Untrusted text (a task id, a topic, a message's content) as a log line
/// may show it: control characters escaped, at most [`SHOWN_CHARS`]
/// characters, then an ellipsis and the original length.
pub fn untrusted(text: &str) -> Untrusted<'_> {
    untrusted_up_to(text, SHOWN_CHARS)
}

/// [`untrusted`] with room for `max_chars` characters (e.g. a parser's
/// error message that quotes the input).
pub fn untrusted_up_to(text: &str, max_chars: usize) -> Untrusted<'_> {
    Untrusted { text, max_chars }
}

/// See [`untrusted`].
#[derive(Clone, Copy, Debug)]
pub struct Untrusted<'a> {
    text: &'a str,
    max_chars: usize,
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shown, c) in self.text.chars().enumerate() {
            if shown == self.max_chars {
                return write!(f, "… ({} bytes)", self.text.len());
            }
            match c {
                // Quotes are harmless in a log line and common in messages.
                '"' | '\'' => f.write_char(c)?,
                c => write!(f, "{}", c.escape_debug())?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_escaped_and_truncated() {
        assert_eq!(untrusted("web-1").to_string(), "web-1");
        assert_eq!(
            untrusted("a\nb\0c\u{1b}[31m\\ \"q\"").to_string(),
            r#"a\nb\0c\u{1b}[31m\\ "q""#
        );
        let long = "x".repeat(10_240);
        let shown = untrusted(&long).to_string();
        assert_eq!(shown, format!("{}… (10240 bytes)", "x".repeat(64)));
        // Right-to-left overrides would reorder the rest of the line.
        assert_eq!(untrusted("a\u{202e}b").to_string(), r"a\u{202e}b");
        assert_eq!(untrusted_up_to("abcdef", 3).to_string(), "abc… (6 bytes)");
    }

    #[test]
    fn task_ids_are_checked() {
        assert_eq!(check_task_id("task id", " web-1 "), Ok("web-1"));
        let uuid = "4c4fb3a6-2b5e-4b59-8d3e-bc4e0a5f6d1e";
        assert_eq!(check_task_id("task id", uuid), Ok(uuid));
        let longest = "t".repeat(MAX_ID_BYTES);
        assert!(check_task_id("task id", &longest).is_ok());
        for (bad, expected) in [
            ("", "task id is empty"),
            ("  ", "task id is empty"),
            (
                &"t".repeat(MAX_ID_BYTES + 1),
                "256 bytes long; the limit is 255",
            ),
            ("a\nb", r#"task id "a\nb" contains a control character"#),
            ("a\0", "control character"),
        ] {
            let err = check_task_id("task id", bad).unwrap_err().to_string();
            assert!(err.contains(expected), "{bad:?}: {err}");
        }
    }

    #[test]
    fn topic_levels_refuse_what_topics_reserve() {
        assert_eq!(check_topic_level("--domain-id", "d-1"), Ok("d-1"));
        for (bad, expected) in [
            ("a/#", "'/'"),
            ("+", "'+'"),
            ("x#", "'#'"),
            ("", "is empty"),
            (" ", "is empty"),
            ("a\tb", "control character"),
        ] {
            let err = check_topic_level("--domain-id", bad)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("--domain-id") && err.contains(expected),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn files_are_read_up_to_the_limit() {
        let dir = std::env::temp_dir().join(format!("propmon-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let at_limit = dir.join("at-limit");
        std::fs::write(&at_limit, "x".repeat(MAX_FILE_BYTES as usize)).unwrap();
        assert_eq!(read_text_file(&at_limit).unwrap().len(), 1 << 20);
        let over = dir.join("over");
        std::fs::write(&over, "x".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        let err = read_text_file(&over).unwrap_err().to_string();
        assert_eq!(err, "larger than the limit of 1 MiB");
        let binary = dir.join("binary");
        std::fs::write(&binary, b"ok\xff").unwrap();
        let err = read_text_file(&binary).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
        let err = read_text_file(&dir).unwrap_err().to_string();
        assert!(err.contains("a directory"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn devices_are_refused_before_any_read() {
        let err = read_text_file(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "not a regular file (a character device)");
    }
}
