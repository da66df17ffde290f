//! The terminal while the view runs: raw mode and the alternate screen,
//! restored however the view ends (`q`, an error, a panic), and stderr
//! kept off the screen meanwhile.
//!
//! Log lines written to stderr while the view is drawn would scribble
//! over it: on Unix, stderr goes to a pipe while the view runs, its last
//! line is shown in the status line, and its lines are written to the
//! real stderr once the terminal is restored.

use std::{
    io,
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor::Show,
        execute,
        terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
    },
};

/// Whether the terminal is in the view's state (raw mode, alternate
/// screen): the panic hook and the guard restore it once.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The terminal in the view's state; dropping it restores the terminal
/// and stderr, then prints the log kept meanwhile.
pub struct Screen {
    pub terminal: Terminal<CrosstermBackend<io::Stdout>>,
    capture: Option<StderrCapture>,
}

impl Screen {
    pub fn enter() -> anyhow::Result<Self> {
        let capture = StderrCapture::start();
        install_panic_hook();
        ACTIVE.store(true, Ordering::SeqCst);
        let entered = enable_raw_mode()
            .and_then(|()| execute!(io::stdout(), EnterAlternateScreen))
            .context("setting the terminal up");
        let terminal = entered.and_then(|()| {
            Terminal::new(CrosstermBackend::new(io::stdout())).context("setting the terminal up")
        });
        let mut terminal = match terminal {
            Ok(terminal) => terminal,
            Err(err) => {
                restore();
                return Err(err);
            }
        };
        let _ = terminal.hide_cursor(); // a visible cursor is only untidy
        let _ = terminal.clear();
        Ok(Screen { terminal, capture })
    }

    /// The newest log line, for the status line.
    pub fn last_log_line(&self) -> Option<String> {
        self.capture.as_ref()?.last_line()
    }

    /// Whether a panic restored the terminal already: draw no more.
    pub fn lost() -> bool {
        !ACTIVE.load(Ordering::SeqCst)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
        if let Some(capture) = self.capture.take() {
            capture.finish();
        }
    }
}

/// Leaves raw mode and the alternate screen, shows the cursor; once.
fn restore() {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return;
    }
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
    restore_stderr();
}

/// A panic anywhere restores the terminal before the panic's message is
/// printed, so that the message is readable and the shell usable. The
/// hook stays (it does nothing once the terminal is restored).
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

#[cfg(unix)]
mod capture {
    use std::{
        collections::VecDeque,
        io::{self, BufRead as _, BufReader, Write as _},
        os::fd::{AsRawFd as _, OwnedFd},
        sync::{
            Arc, Mutex, PoisonError,
            atomic::{AtomicI32, Ordering},
        },
        thread::JoinHandle,
    };

    use super::strip_ansi;

    /// Log lines kept while the view runs (the oldest are dropped).
    const KEPT_LOG_LINES: usize = 200;

    /// The real stderr while it is redirected, for the panic hook.
    static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);

    pub struct StderrCapture {
        saved: OwnedFd,
        lines: Arc<Mutex<VecDeque<String>>>,
        reader: Option<JoinHandle<()>>,
    }

    impl StderrCapture {
        /// Redirects stderr to a pipe read by a thread; `None` (stderr
        /// untouched) if that cannot be done.
        pub fn start() -> Option<Self> {
            use nix::{
                fcntl::{FcntlArg, FdFlag, fcntl},
                unistd,
            };
            let saved = unistd::dup(io::stderr()).ok()?;
            // pipe2 is not everywhere: the read end is kept from children
            // by hand.
            let (read, write) = unistd::pipe().ok()?;
            fcntl(&read, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).ok()?;
            let lines = Arc::new(Mutex::new(VecDeque::new()));
            let kept = lines.clone();
            let reader = std::thread::Builder::new()
                .name("propmon-top-log".to_owned())
                .spawn(move || keep_lines(read, &kept))
                .ok()?;
            unistd::dup2_stderr(&write).ok()?;
            drop(write); // stderr is now the pipe's only writer
            SAVED_STDERR.store(saved.as_raw_fd(), Ordering::SeqCst);
            Some(StderrCapture {
                saved,
                lines,
                reader: Some(reader),
            })
        }

        pub fn last_line(&self) -> Option<String> {
            let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
            lines.back().cloned()
        }

        /// Puts stderr back and writes there what was logged meanwhile.
        pub fn finish(mut self) {
            restore_stderr();
            let _ = nix::unistd::dup2_stderr(&self.saved);
            if let Some(reader) = self.reader.take() {
                let _ = reader.join(); // ends at the pipe's end of file
            }
            let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
            let mut stderr = io::stderr().lock();
            for line in lines.iter() {
                let _ = writeln!(stderr, "{line}");
            }
        }
    }

    fn keep_lines(read: OwnedFd, lines: &Mutex<VecDeque<String>>) {
        for line in BufReader::new(std::fs::File::from(read)).lines() {
            let Ok(line) = line else { return };
            let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
            if lines.len() == KEPT_LOG_LINES {
                lines.pop_front();
            }
            lines.push_back(strip_ansi(&line));
        }
    }

    /// Puts the real stderr back (from the panic hook too), once.
    pub fn restore_stderr() {
        let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
        if saved >= 0 {
            // SAFETY: `saved` is the OwnedFd the capture keeps open until
            // after this; dup2 onto 2 does not take it over.
            unsafe { libc::dup2(saved, 2) };
        }
    }
}

#[cfg(not(unix))]
mod capture {
    /// No redirection where there are no file descriptors to swap: log
    /// lines may show through the view.
    pub struct StderrCapture;

    impl StderrCapture {
        pub fn start() -> Option<Self> {
            None
        }

        pub fn last_line(&self) -> Option<String> {
            None
        }

        pub fn finish(self) {}
    }

    pub fn restore_stderr() {}
}

use capture::{StderrCapture, restore_stderr};

/// A log line without its colour codes (logs are coloured when stderr is
/// a terminal, which it was when logging started).
#[cfg_attr(not(unix), allow(dead_code))]
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_stripped_from_log_lines() {
        let line = "\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m eBPF unavailable";
        assert_eq!(strip_ansi(line), "2026  WARN eBPF unavailable");
        assert_eq!(strip_ansi("plain"), "plain");
        assert_eq!(strip_ansi("cut \u{1b}"), "cut ");
    }
}
