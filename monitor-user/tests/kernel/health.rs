//! Issue 12, item 3: what the kernel programs could not do reaches the
//! agent's log (at most one line a minute per kind, with the number not
//! logged) and the proplet-level message (`kernel`).

use std::{process::Command, time::Duration};

use crate::{
    Live, kernel_test,
    mqtt::{Broker, agent, stop},
};

/// With one task slot the agent keeps no provisional slot (at most an
/// eighth of them), so every module exec before its start message is a
/// loss: three of them give one log line and a count of 3.
#[test]
fn kernel_losses_are_logged_once_a_minute_and_counted_in_the_proplet_message() {
    let Some(_serial) = kernel_test() else { return };
    let broker = Broker::start(None);
    let live = Live::start(agent(
        &broker.url(),
        &["--propeller", "--max-tasks", "1", "--metrics-interval", "1"],
    ));
    live.wait_for_log("subscribed to", 1, Duration::from_secs(20));
    for task in ["early-a", "early-b", "early-c"] {
        // sh runs with the module's path as $0, as a host runtime would.
        let status = Command::new("sh")
            .args(["-c", "exit 0", &format!("/tmp/proplet_{task}.wasm")])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let logged = "kernel: process";
    live.wait_for_log(logged, 1, Duration::from_secs(10));
    // Two proplet-level messages later, the count is in one.
    std::thread::sleep(Duration::from_millis(2500));
    let run = stop(live);

    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| line.contains("no provisional slot is left"))
        .collect();
    assert_eq!(lines.len(), 1, "one line a minute: {lines:#?}");
    assert!(
        lines[0].contains("kernel: ") && lines[0].contains("(1 so far, 0 not logged"),
        "{}",
        lines[0]
    );
    let health = run
        .stdout_lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|message| message.get("kernel").cloned())
        .next_back()
        .unwrap_or_else(|| {
            panic!(
                "no proplet message with kernel counts: {:#?}",
                run.stdout_lines
            )
        });
    assert_eq!(health["provisional_exhausted"], 3, "{health}");
    assert_eq!(health["storage_failures"], 0, "{health}");
    assert_eq!(health["event_drops"], 0, "{health}");
}
