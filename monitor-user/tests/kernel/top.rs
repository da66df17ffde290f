//! Issue 11, items 4 and 5: `propmon top`, in batch mode against the
//! JSON of `propmon run` and of an agent, and its terminal view in a
//! pseudo-terminal, read as a terminal would show it (vt100).

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use propmon::{message::TaskMetricsMessage, top::format};

use crate::{
    Live, Sleepers, kernel_test, propmon, propmon_bin, quiet_agent, run_to_end, wait_with_deadline,
};

/// The batch table's header, as scripts read it.
const HEADER: &str = "  CPU%     MEM  READ/s WRITE/s    RX/s    TX/s PROCS   THR   STATE TASK";

/// One task's line of a batch table.
#[derive(Debug)]
struct Line {
    cpu: Option<f64>,
    memory: String,
    processes: u64,
    threads: String,
    state: String,
    task_id: String,
}

impl Line {
    fn parse(text: &str) -> Self {
        let cells: Vec<&str> = text.split_whitespace().collect();
        assert!(cells.len() >= 10, "not a table line: {text:?}");
        Line {
            cpu: cells[0].parse().ok(),
            memory: cells[1].to_owned(),
            processes: cells[6].parse().unwrap(),
            threads: cells[7].to_owned(),
            state: cells[8].to_owned(),
            task_id: cells[9..].join(" "),
        }
    }
}

/// The tables of a batch run: each a list of task lines, after checking
/// the title and header of each.
fn tables(stdout: &str) -> Vec<Vec<Line>> {
    let mut tables = Vec::new();
    for block in stdout.split_terminator("\n\n") {
        let mut lines = block.lines();
        let title = lines.next().unwrap();
        assert!(title.starts_with("propmon top: "), "{stdout}");
        assert_eq!(lines.next(), Some(HEADER), "{stdout}");
        tables.push(lines.map(Line::parse).collect());
    }
    tables
}

/// Runs `top` (killed after `timeout`) and returns its status, stdout and
/// stderr.
fn run_top(mut command: Command, timeout: Duration) -> (ExitStatus, String, String) {
    command.stdin(Stdio::null());
    let mut child = command.spawn().expect("start propmon top");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let status = wait_with_deadline(&mut child, timeout);
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

/// The `threads` workload: two threads burning `ms` of CPU each.
fn threads_workload(ms: u64) -> Vec<String> {
    let ms = ms.to_string();
    let workload = ["workload", "threads", "--threads", "2", "--after-ms", &ms];
    let mut argv = vec![propmon_bin().display().to_string()];
    argv.extend(workload.iter().map(|arg| arg.to_string()));
    argv
}

/// Item 5: the batch table of a known workload, and the same workload
/// under `propmon run`: the same task, so comparable CPU, and the same
/// processes and threads.
#[test]
fn batch_tables_agree_with_what_run_reports() {
    let Some(_serial) = kernel_test() else { return };
    let mut top = propmon(&[
        "top",
        "--batch",
        "--iterations",
        "3",
        "--task-id",
        "top-threads",
    ]);
    top.arg("--").args(threads_workload(6_000));
    let (status, stdout, stderr) = run_top(top, Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let tables = tables(&stdout);
    assert_eq!(tables.len(), 3, "{stdout}");
    for table in &tables {
        assert_eq!(table.len(), 1, "{stdout}");
        let line = &table[0];
        assert_eq!(
            (line.task_id.as_str(), line.state.as_str()),
            ("top-threads", "running")
        );
        // Two threads spinning: at most two cores, and some CPU however
        // busy the machine is.
        let cpu = line.cpu.unwrap_or_else(|| panic!("no CPU: {stdout}"));
        assert!((20.0..=210.0).contains(&cpu), "{stdout}");
    }

    // Long enough that both threads spin through its first two messages,
    // as through top's three tables.
    let mut run = propmon(&["run", "--interval", "1s", "--profile", "intensive", "--"]);
    run.args(threads_workload(3_000));
    let run = run_to_end(run, Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.stderr);
    run.final_message();
    assert!(run.messages.len() >= 3, "{}", run.stderr);
    for message in &run.messages[..2] {
        let cpu = message.metrics.cpu_percent.unwrap();
        assert!((20.0..=210.0).contains(&cpu), "run: {message:?}");
        for table in &tables {
            let line = &table[0];
            assert_eq!(line.processes, message.metrics.process_count, "{stdout}");
            let threads = message.metrics.thread_count.unwrap().to_string();
            assert_eq!(line.threads, threads, "{message:?}\n{stdout}");
        }
    }
}

/// A busy process for an agent to attach; killed on drop.
struct Busy(Child);

impl Busy {
    fn start() -> Self {
        let child = Command::new(propmon_bin())
            .args(["workload", "busy", "--seconds", "300"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Busy(child)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Item 4: `--connect` reads an agent's local API; each table lists the
/// attached task with the figures of a message the agent sent.
#[test]
fn connect_lists_the_tasks_of_a_running_agent() {
    let Some(_serial) = kernel_test() else { return };
    let busy = Busy::start();
    let mut agent = quiet_agent();
    agent.args(["--listen", "127.0.0.1:0", "--attach"]);
    agent.arg(format!("top-busy={}", busy.0.id()));
    let mut live = Live::start(agent);
    let said = "serving /metrics and /api/v1/tasks on ";
    live.wait_for_log(said, 1, Duration::from_secs(30));
    let addr = live.log_lines(said)[0]
        .split(said)
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    live.until(Duration::from_secs(20), |m| m.task_id == "top-busy");

    let top = propmon(&["top", "--connect", &addr, "--batch", "--iterations", "3"]);
    let (status, stdout, stderr) = run_top(top, Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let tables = tables(&stdout);
    assert_eq!(tables.len(), 3, "{stdout}");
    let run = live.terminate();
    assert!(run.status.success(), "{}", run.stderr);
    let sent: Vec<&TaskMetricsMessage> = run.messages.iter().filter(|m| !m.is_final).collect();
    for table in &tables {
        assert_eq!(table.len(), 1, "{stdout}");
        let line = &table[0];
        assert_eq!(
            (line.task_id.as_str(), line.state.as_str()),
            ("top-busy", "running")
        );
        // The figures of one of the agent's messages.
        let memory = |m: &&TaskMetricsMessage| format::bytes(m.metrics.memory_bytes.unwrap());
        assert!(sent.iter().any(|m| memory(m) == line.memory), "{stdout}");
        assert_eq!(line.processes, 1);
        let cpu = line.cpu.unwrap();
        assert!((20.0..=110.0).contains(&cpu), "one core at most: {stdout}");
    }
    drop(busy);
}

/// Item 4: an agent on a root-only unix socket, and one that is not
/// there: one line that says what to do, exit 1.
#[test]
fn connect_takes_a_unix_socket_and_says_when_no_agent_listens() {
    let Some(_serial) = kernel_test() else { return };
    let sleepers = Sleepers::start(1, 120);
    let socket = crate::scratch("top.sock");
    let listen = format!("unix:{}", socket.display());
    let mut agent = propmon(&[
        "agent",
        "--backend",
        "sysinfo",
        "--enable-monitoring",
        "false",
    ]);
    agent.args(["--profile", "intensive", "--listen", &listen]);
    agent.args(sleepers.attach_args("idle"));
    let mut live = Live::start(agent);
    live.until(Duration::from_secs(20), |m| m.task_id == "idle-0");
    let top = propmon(&["top", "--connect", &listen, "--batch", "--iterations", "1"]);
    let (status, stdout, stderr) = run_top(top, Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    let tables = tables(&stdout);
    assert_eq!(tables[0][0].task_id, "idle-0", "{stdout}");
    let run = live.terminate();
    assert!(run.status.success(), "{}", run.stderr);

    let top = propmon(&["top", "--connect", &listen, "--batch"]);
    let (status, stdout, stderr) = run_top(top, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(
        stderr.trim(),
        format!(
            "propmon: cannot reach the agent at {listen}: no such socket (is `propmon agent \
             --listen {listen}` running?)"
        )
    );
}

/// A program in a pseudo-terminal, and the screen it draws there.
struct Terminal {
    child: Child,
    master: File,
    /// What the program wrote, and the screen it makes.
    shown: Arc<Mutex<(Vec<u8>, vt100::Parser)>>,
}

impl Terminal {
    fn start(args: &[&str], rows: u16, cols: u16) -> Self {
        let size = winsize(rows, cols);
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave = File::from(pty.slave);
        let mut command = Command::new(propmon_bin());
        command
            .args(args)
            .env("TERM", "xterm-256color")
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // A session of its own, with the pty as its terminal.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start propmon in a pty");
        drop(command); // our copies of the slave: EOF once the child exits
        let master = File::from(pty.master);
        let parser = vt100::Parser::new(rows.try_into().unwrap(), cols.try_into().unwrap(), 0);
        let shown = Arc::new(Mutex::new((Vec::new(), parser)));
        let mut reader = master.try_clone().unwrap();
        let sink = shown.clone();
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // Ends with EIO once the last holder of the slave is gone.
            while let Ok(read @ 1..) = reader.read(&mut buffer) {
                let mut shown = sink.lock().unwrap();
                shown.0.extend_from_slice(&buffer[..read]);
                shown.1.process(&buffer[..read]);
            }
        });
        Terminal {
            child,
            master,
            shown,
        }
    }

    fn screen(&self) -> String {
        self.shown.lock().unwrap().1.screen().contents()
    }

    fn output(&self) -> Vec<u8> {
        self.shown.lock().unwrap().0.clone()
    }

    fn wait_for_screen(&self, what: &str, wanted: impl Fn(&str) -> bool) {
        let timeout = Duration::from_secs(30);
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if wanted(&screen) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; the screen:\n{screen}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).unwrap();
    }

    /// Resizes the terminal (the program gets SIGWINCH).
    fn resize(&mut self, rows: u16, cols: u16) {
        let mut shown = self.shown.lock().unwrap();
        shown
            .1
            .set_size(rows.try_into().unwrap(), cols.try_into().unwrap());
        let size = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        let set = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(set, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    fn wait(&mut self) -> ExitStatus {
        wait_with_deadline(&mut self.child, Duration::from_secs(30))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn winsize(rows: u16, cols: u16) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// What leaving the view must have written: the alternate screen left,
/// the cursor shown again.
fn assert_restored(output: &[u8]) {
    let text = String::from_utf8_lossy(output);
    let left = text
        .rfind("\x1b[?1049l")
        .expect("the alternate screen was never left");
    let entered = text
        .rfind("\x1b[?1049h")
        .expect("the alternate screen was never entered");
    assert!(left > entered, "the alternate screen was entered again");
    assert!(
        text[left..].contains("\x1b[?25h"),
        "the cursor is not shown again"
    );
}

/// Item 4: the terminal view of `top -- CMD` in a pseudo-terminal: too
/// small, it says so; resized, the table with the task; Enter, its
/// details; `q`, exit 0 with the terminal restored.
#[test]
fn the_terminal_view_shows_tasks_details_and_restores_the_terminal() {
    let Some(_serial) = kernel_test() else { return };
    // An untracked peer on loopback, which the task talks to before it
    // turns busy: its details must show that peer.
    const PEER_PORT: u16 = 7391;
    let mut peer = Command::new(propmon_bin())
        .args(["workload", "net-peer", "--port", &PEER_PORT.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", PEER_PORT)).is_err() {
        assert!(Instant::now() < deadline, "the peer never listened");
        thread::sleep(Duration::from_millis(20));
    }
    let bin = propmon_bin().display().to_string();
    let script = format!(
        "{bin} workload peers --tcp 127.0.0.1:{PEER_PORT} --bytes 100000 --report /dev/null \
         && exec {bin} workload busy --seconds 120"
    );
    let args = ["top", "--task-id", "tui-busy", "--", "sh", "-c", &script];
    let mut terminal = Terminal::start(&args, 6, 50);
    terminal.wait_for_screen("the too-small message", |s| {
        s.contains("terminal too small")
    });
    terminal.resize(30, 110);
    terminal.wait_for_screen("the table", |screen| {
        screen.contains("CPU%") && screen.contains("TASK") && screen.contains("tui-busy")
    });
    terminal.type_keys(b"m");
    terminal.wait_for_screen("sorted by memory", |s| s.contains("sorted by memory"));
    terminal.type_keys(b"\r");
    terminal.wait_for_screen("the details", |screen| {
        screen.contains("Network by protocol")
            && screen.contains("Peers")
            && screen.contains("tui-busy")
            && screen.contains(&format!("127.0.0.1:{PEER_PORT}"))
    });
    terminal.type_keys(b"q");
    let status = terminal.wait();
    let _ = peer.kill();
    let _ = peer.wait();
    assert!(
        status.success(),
        "{status:?}; the screen:\n{}",
        terminal.screen()
    );
    assert_restored(&terminal.output());
    assert!(!terminal.screen().contains("CPU%"), "{}", terminal.screen());
}

/// Item 4: SIGTERM ends the view too, with the terminal restored (and
/// 128 + 15, as `run` gives).
#[test]
fn the_terminal_is_restored_after_a_signal() {
    let Some(_serial) = kernel_test() else { return };
    let args = ["top", "--task-id", "tui-sleep", "--", "sleep", "120"];
    let mut terminal = Terminal::start(&args, 24, 80);
    terminal.wait_for_screen("the table", |screen| screen.contains("tui-sleep"));
    let pid = nix::unistd::Pid::from_raw(terminal.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = terminal.wait();
    assert_eq!(status.code(), Some(128 + 15));
    assert_restored(&terminal.output());
}

/// Bad input is one line and exit 2, before anything starts.
#[test]
fn top_refuses_what_it_cannot_show() {
    for (args, expected) in [
        (&["top", "--batch"][..], "nothing to show"),
        (
            &["top", "--task-id", "x", "--attach", "a=1", "--batch"][..],
            "give a CMD",
        ),
        (
            &["top", "--connect", "example.com:1", "--batch"][..],
            "expected an IP address",
        ),
        (
            &["top", "--", "true"][..],
            "stdout is not a terminal: add --batch",
        ),
    ] {
        let (status, _, stderr) = run_top(propmon(args), Duration::from_secs(20));
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("propmon: "))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(errors[0].contains(expected), "{args:?}: {stderr}");
    }
}
