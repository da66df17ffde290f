//! The command line as a user meets it: exit codes, signals, bad input.

use std::{process::Command, time::Duration};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{Live, kernel_test, propmon, run_to_end};

#[test]
fn exit_status_of_the_command_is_passed_through() {
    let Some(_serial) = kernel_test() else { return };
    for (script, expected) in [("exit 0", 0), ("exit 7", 7), ("kill -9 $$", 128 + 9)] {
        let mut command = propmon(&["run", "--", "sh", "-c"]);
        command.arg(script);
        let run = run_to_end(command, Duration::from_secs(20));
        assert_eq!(
            run.status.code(),
            Some(expected),
            "{script}: {}",
            run.stderr
        );
        assert!(run.final_message().is_final);
    }
}

#[test]
fn a_command_that_cannot_run_gives_127_or_126() {
    let Some(_serial) = kernel_test() else { return };
    let run = run_to_end(
        propmon(&["run", "--", "/nonexistent/command"]),
        Duration::from_secs(20),
    );
    assert_eq!(run.status.code(), Some(127));
    assert!(
        run.stderr.contains("/nonexistent/command"),
        "{}",
        run.stderr
    );
    assert!(run.messages.is_empty());
    let run = run_to_end(
        propmon(&["run", "--", "/etc/hostname"]),
        Duration::from_secs(20),
    );
    assert_eq!(run.status.code(), Some(126), "{}", run.stderr);
}

/// SIGTERM ends the run early, with a final message carrying the totals.
#[test]
fn sigterm_gives_a_final_message() {
    let Some(_serial) = kernel_test() else { return };
    let mut live = Live::start(propmon(&[
        "run",
        "--interval",
        "300ms",
        "--",
        "sleep",
        "30",
    ]));
    live.until(Duration::from_secs(10), |m| m.seq == 2);
    kill(Pid::from_raw(live.pid() as i32), Signal::SIGTERM).unwrap();
    let run = live.finish(Duration::from_secs(10));
    let last = run.final_message();
    assert!(last.seq >= 3);
    assert_eq!(last.metrics.process_count, 0, "sleep got the SIGTERM too");
    assert_eq!(run.status.code(), Some(128 + 15), "{}", run.stderr);
}

#[test]
fn bad_arguments_give_one_clear_line() {
    for (args, expected) in [
        (
            &["run", "--interval", "fast", "--", "true"][..],
            "invalid duration \"fast\"",
        ),
        (
            &["run", "--interval", "0s", "--", "true"][..],
            "out of range",
        ),
        (
            &["run", "--profile", "turbo", "--", "true"][..],
            "unknown profile \"turbo\"",
        ),
        (&["run"][..], "CMD"),
    ] {
        let output = Command::new(crate::propmon_bin())
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

fn as_nobody(args: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(crate::propmon_bin())
        .args(args);
    command
}

/// Without privileges and `--backend ebpf`: one line naming the missing
/// capability, exit 125, and the command is not run.
#[test]
fn unprivileged_ebpf_run_names_what_is_missing() {
    let Some(_serial) = kernel_test() else { return };
    let marker = crate::scratch("must-not-exist");
    let output = as_nobody(&["run", "--backend", "ebpf", "--", "touch"])
        .arg(&marker)
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(125), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("root"),
        "{stderr}"
    );
    assert!(!marker.exists());
}

/// Without privileges, the default backend says why it cannot use eBPF,
/// in one line, and keeps working with sysinfo.
#[test]
fn unprivileged_run_falls_back_to_sysinfo() {
    let Some(_serial) = kernel_test() else { return };
    let output = as_nobody(&["run", "--interval", "200ms", "--", "sleep", "0.5"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("CAP_BPF") && warnings[0].contains("sysinfo"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let messages = crate::parse_lines(&stdout);
    let last = messages.last().expect("messages");
    assert!(last.is_final);
    assert_eq!(last.source, propmon::message::Source::Sysinfo);
    assert!(messages.len() >= 2, "{stdout}");
    assert_eq!(
        last.metrics.network_tx_bytes, None,
        "sysinfo cannot attribute network bytes"
    );
}

/// propmon with `args` run to its end (killed after 20 s: an invalid
/// setting that slipped through would otherwise run forever).
fn run_args(args: &[&str]) -> crate::Finished {
    let mut command = propmon(args);
    command.stdin(std::process::Stdio::null());
    run_to_end(command, Duration::from_secs(20))
}

/// Issue 10: durations out of range are refused by the parser (exit 2)
/// instead of overflowing the clock (a panic, exit 101).
#[test]
fn absurd_durations_are_refused_not_panicked_on() {
    for (args, expected) in [
        (
            &["agent", "--metrics-interval", "9223372036854775807"][..],
            "between 1s and 24h",
        ),
        (&["agent", "--discovery-grace", "1000y"][..], "out of range"),
        (
            &["workload", "busy", "--seconds=-1"][..],
            "must be between 0 and 86400",
        ),
        (
            &["agent", "--attach", "a\u{1b}[2J=1"][..],
            "contains a control character",
        ),
    ] {
        let run = run_args(args);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
}

/// Issue 10: a misspelt profile field is named in a warning, and a history
/// window above the per-task maximum is cut with a warning naming the task.
#[test]
fn odd_profiles_are_warned_about() {
    let run = run_args(&[
        "run",
        "--backend",
        "sysinfo",
        "--task-id",
        "odd",
        "--profile-json",
        r#"{"intervall": 1, "history_size": 1000000}"#,
        "--",
        "true",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    let warnings: Vec<&str> = run.stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert!(
        warnings[0].contains(r#"monitoring profile: unknown field "intervall" ignored (known fields: enabled, interval,"#),
        "{}",
        run.stderr
    );
    assert!(
        warnings[1].contains("task odd: history_size 1000000 cut to 10000 samples"),
        "{}",
        run.stderr
    );
    assert_eq!(warnings.len(), 2, "{}", run.stderr);
    assert!(run.final_message().is_final);
}
