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

/// Issue 10: invalid arguments and configuration exit 2 with one line
/// `propmon: ...` on stderr, before anything runs; files are read up to
/// 1 MiB, devices not at all; ids are checked where they enter.
#[test]
fn invalid_settings_exit_2_with_one_line() {
    let big = crate::scratch("big.json");
    std::fs::write(&big, format!("{{\"interval\": 5{}}}", " ".repeat(1 << 20))).unwrap();
    let big_profile = format!("@{}", big.display());
    let config = crate::scratch("config.toml");
    std::fs::write(&config, "metrics_interval = 9223372036854775807\n").unwrap();
    let config = config.display().to_string();
    let long_id = "t".repeat(256);
    let mqtt = |domain: &'static str, channel: &'static str| {
        vec![
            "agent",
            "--backend",
            "sysinfo",
            "--mqtt-url",
            "mqtt://127.0.0.1:1",
            "--domain-id",
            domain,
            "--channel-id",
            channel,
        ]
    };
    let run = |extra: &[&'static str]| {
        let mut args = vec!["run", "--backend", "sysinfo"];
        args.extend_from_slice(extra);
        args.extend(["--", "true"]);
        args
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (run(&["--task-id", ""]), "--task-id is empty"),
        (
            run(&["--task-id", "a\nb"]),
            r#"--task-id "a\nb" contains a control character"#,
        ),
        (
            vec!["run", "--task-id", &long_id, "--", "true"],
            "--task-id is 256 bytes long; the limit is 255",
        ),
        (
            run(&["--proplet-id", "edge/7"]),
            r#"--proplet-id "edge/7" contains '/'"#,
        ),
        (
            run(&["--profile-json", "{"]),
            "--profile-json: monitoring profile is not valid JSON",
        ),
        (
            run(&["--profile-json", "@/dev/zero"]),
            "the profile file /dev/zero: not a regular file (a character device)",
        ),
        (
            vec!["run", "--profile-json", &big_profile, "--", "true"],
            "larger than the limit of 1 MiB",
        ),
        (
            vec!["agent", "--config", "/dev/zero"],
            "--config: the configuration file /dev/zero: not a regular file",
        ),
        (
            vec!["agent", "--config", &config],
            r#"interval "9223372036854775807" is out of range"#,
        ),
        (
            run(&["--mqtt-url", "mqtt://127.0.0.1:1"]),
            "--mqtt-url needs --domain-id and --channel-id",
        ),
        (mqtt("a/#", "c"), r#"--domain-id "a/#" contains '/'"#),
        (mqtt("+", "c"), r#"--domain-id "+" contains '+'"#),
        (mqtt("d", "#"), r##"--channel-id "#" contains '#'"##),
        (mqtt("", "c"), "--domain-id is empty"),
    ];
    for (args, expected) in cases {
        let run = run_args(&args);
        let shown = format!("{:.80?}: {}", args, run.stderr);
        assert_eq!(run.status.code(), Some(2), "{shown}");
        assert_eq!(run.stderr.lines().count(), 1, "one line: {shown}");
        assert!(run.stderr.starts_with("propmon: "), "{shown}");
        assert!(run.stderr.contains(expected), "{shown}");
        assert!(run.stdout_lines.is_empty(), "{shown}");
    }
    let _ = std::fs::remove_file(big);
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

/// Issue 10: `agent --backend ebpf` without privileges exits 125, as `run`
/// does, with one line naming what is missing.
#[test]
fn unprivileged_ebpf_agent_exits_125() {
    let Some(_serial) = kernel_test() else { return };
    let output = as_nobody(&["agent", "--backend", "ebpf"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(125), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("propmon: eBPF unavailable"), "{stderr}");
}
