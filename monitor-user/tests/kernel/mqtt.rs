//! MQTT export and Propeller mode against a real mosquitto broker on a free
//! loopback port, watched by a real `mosquitto_sub`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use propmon::message::TaskMetricsMessage;
use serde::Deserialize;

use crate::{
    Finished, Live, Sleepers, kernel_test, propmon, propmon_bin, scratch, tcp_proxy::TcpProxy,
};

const DOMAIN: &str = "dom";
const CHANNEL: &str = "chan";
const PROPLET: &str = "proplet-under-test";

pub(crate) fn topic(path: &str) -> String {
    format!("m/{DOMAIN}/c/{CHANNEL}/{path}")
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto broker of our own; with a password file when asked; with
/// persistence, so that a subscriber's session survives a restart.
pub(crate) struct Broker {
    port: u16,
    dir: PathBuf,
    process: Option<Child>,
}

impl Broker {
    pub(crate) fn start(password: Option<(&str, &str)>) -> Self {
        Self::start_with(password, false)
    }

    /// A broker on TLS only, with a certificate for `localhost` signed by a
    /// CA of our own (`ca.crt` in its directory).
    fn start_tls() -> Self {
        Self::start_with(None, true)
    }

    fn start_with(password: Option<(&str, &str)>, tls: bool) -> Self {
        let port = free_port();
        let dir = scratch(&format!("mosquitto-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = format!(
            "listener {port} 127.0.0.1\npersistence true\npersistence_location {}/\n\
             log_dest stderr\n",
            dir.display()
        );
        if tls {
            make_certificates(&dir);
            for (key, file) in [
                ("cafile", "ca.crt"),
                ("certfile", "server.crt"),
                ("keyfile", "server.key"),
            ] {
                config.push_str(&format!("{key} {}\n", dir.join(file).display()));
            }
        }
        match password {
            Some((user, secret)) => {
                let file = dir.join("passwords");
                let status = Command::new("mosquitto_passwd")
                    .args(["-c", "-b"])
                    .arg(&file)
                    .args([user, secret])
                    .status()
                    .expect("mosquitto_passwd (installed by cargo xtask setup)");
                assert!(status.success());
                config.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    file.display()
                ));
            }
            None => config.push_str("allow_anonymous true\n"),
        }
        std::fs::write(dir.join("mosquitto.conf"), config).unwrap();
        let mut broker = Broker {
            port,
            dir,
            process: None,
        };
        broker.resume();
        broker
    }

    pub(crate) fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Stops the broker (it saves its sessions).
    pub(crate) fn pause(&mut self) {
        if let Some(mut process) = self.process.take() {
            kill(Pid::from_raw(process.id() as i32), Signal::SIGTERM).unwrap();
            process.wait().unwrap();
        }
    }

    /// What the broker logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    pub(crate) fn resume(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .unwrap();
        let process = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto (installed by cargo xtask setup)");
        self.process = Some(process);
        for _ in 0..250 {
            if std::net::TcpStream::connect(("localhost", self.port)).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("mosquitto did not listen on {}", self.port);
    }

    pub(crate) fn publish(&self, path: &str, payload: &str) {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q", "1"])
            .args(["-t", &topic(path), "-s"])
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().unwrap().write_all(payload.as_bytes())?;
                child.wait()
            })
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.pause();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA and a `localhost` server certificate, readable by mosquitto's user.
fn make_certificates(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl (installed by cargo xtask setup)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=propmon test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    ]);
    for file in ["ca.crt", "server.crt", "server.key"] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// A real `mosquitto_sub` on every topic of our channel, with a persistent
/// QoS 1 session so that it misses nothing across a broker restart.
pub(crate) struct Subscriber {
    process: Child,
    lines: Arc<Mutex<Vec<(String, String)>>>,
}

impl Subscriber {
    pub(crate) fn start(broker: &Broker, credentials: Option<(&str, &str)>) -> Self {
        Self::start_with(broker, credentials, None)
    }

    fn start_with(
        broker: &Broker,
        credentials: Option<(&str, &str)>,
        ca_file: Option<&std::path::Path>,
    ) -> Self {
        let mut command = Command::new("mosquitto_sub");
        command
            .args(["-h", "localhost", "-p", &broker.port.to_string()])
            .args(["-t", &topic("#"), "-v", "-q", "1", "-c"])
            .args(["-i", &format!("test-sub-{}", broker.port)])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some((user, secret)) = credentials {
            command.args(["-u", user, "-P", secret]);
        }
        if let Some(ca_file) = ca_file {
            command.arg("--cafile").arg(ca_file);
        }
        let mut process = command.spawn().expect("mosquitto_sub");
        let stdout = process.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((topic, payload)) = line.split_once(' ') {
                    sink.lock()
                        .unwrap()
                        .push((topic.to_owned(), payload.to_owned()));
                }
            }
        });
        thread::sleep(Duration::from_millis(300)); // subscribed
        Subscriber { process, lines }
    }

    /// Task messages received on `path`.
    pub(crate) fn task_messages(&self, path: &str) -> Vec<TaskMetricsMessage> {
        let topic = topic(path);
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t == topic)
            .map(|(_, payload)| serde_json::from_str(payload).unwrap())
            .collect()
    }

    pub(crate) fn count_on(&self, path: &str) -> usize {
        let topic = topic(path);
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t == topic)
            .count()
    }

    /// Waits until `done` holds for the messages received so far.
    pub(crate) fn wait_for(&self, timeout: Duration, done: impl Fn(&[TaskMetricsMessage]) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(&self.task_messages("control/proplet/task_metrics")) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let received: Vec<(String, u64, bool)> = self
            .task_messages("control/proplet/task_metrics")
            .into_iter()
            .map(|m| (m.task_id, m.seq, m.is_final))
            .collect();
        panic!("mosquitto_sub did not receive what was expected: {received:?}");
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

pub(crate) fn agent(broker_url: &str, extra: &[&str]) -> Command {
    let mut command = propmon(&["agent", "--mqtt-url", broker_url]);
    command
        .args([
            "--domain-id",
            DOMAIN,
            "--channel-id",
            CHANNEL,
            "--proplet-id",
            PROPLET,
        ])
        .args(extra);
    command
}

/// An agent in Propeller mode, connected and subscribed.
pub(crate) fn propeller_agent(broker: &Broker) -> Live {
    let live = Live::start(agent(
        &broker.url(),
        &["--propeller", "--enable-monitoring", "false"],
    ));
    live.wait_for_log("subscribed to", 1, Duration::from_secs(20));
    live
}

pub(crate) fn stop(live: Live) -> Finished {
    kill(Pid::from_raw(live.pid() as i32), Signal::SIGTERM).unwrap();
    let run = live.finish(Duration::from_secs(15));
    assert!(run.status.success(), "{}", run.stderr);
    run
}

#[derive(Debug, Deserialize)]
pub(crate) struct RuntimeTruth {
    pub(crate) cpu_ns: u64,
    pub(crate) net: NetTally,
}

impl RuntimeTruth {
    /// A runtime's final message: CPU within 2% of getrusage of its tree,
    /// its TCP bytes exact.
    pub(crate) fn assert_counted(&self, last: &TaskMetricsMessage) {
        let cpu = last.metrics.cpu_time_ns.unwrap();
        crate::assert_close(&last.task_id, cpu, self.cpu_ns, 0.02);
        assert_eq!(last.metrics.network_tx_bytes, Some(self.net.tcp_tx));
        assert_eq!(last.metrics.network_rx_bytes, Some(self.net.tcp_rx));
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct NetTally {
    pub(crate) tcp_tx: u64,
    pub(crate) tcp_rx: u64,
}

/// Start messages (snake_case and camelCase) from the "Manager", a fake
/// host runtime found by its module path, totals checked against ground
/// truth as a real `mosquitto_sub` received them; a stop ends a task.
#[test]
fn propeller_start_discovery_and_stop_end_to_end() {
    let Some(_serial) = kernel_test() else { return };
    let broker = Broker::start(None);
    let subscriber = Subscriber::start(&broker, None);
    let live = propeller_agent(&broker); // connected and subscribed

    broker.publish(
        "control/manager/start",
        &format!(
            r#"{{"id":"e2e-snake","name":"net","file":"AGFzbQ==","daemon":false,"proplet_id":"{PROPLET}","broadcast":false,"monitoring_profile":{{"interval":1000000000}}}}"#
        ),
    );
    broker.publish(
        "control/manager/start",
        &format!(
            r#"{{"id":"e2e-camel","functionName":"sleeper","propletId":"{PROPLET}","monitoringProfile":{{"interval":1}}}}"#
        ),
    );
    thread::sleep(Duration::from_millis(300));

    let report = scratch("runtime.json");
    let module = std::env::temp_dir().join("proplet_e2e-snake.wasm");
    let status = Command::new(propmon_bin())
        .args([
            "workload",
            "runtime",
            "--burn-ms",
            "300",
            "--bytes",
            "400000",
            "--module",
        ])
        .arg(&module)
        .arg("--report")
        .arg(&report)
        .status()
        .unwrap();
    assert!(status.success());
    let mut sleeper = Command::new("sh")
        .args(["-c", "sleep 30", "/tmp/proplet_e2e-camel.wasm"])
        .spawn()
        .unwrap();
    subscriber.wait_for(Duration::from_secs(10), |messages| {
        messages
            .iter()
            .any(|m| m.task_id == "e2e-snake" && m.is_final)
            && messages
                .iter()
                .any(|m| m.task_id == "e2e-camel" && m.seq >= 2)
    });
    broker.publish(
        "control/manager/stop",
        &format!(r#"{{"id":"e2e-camel","proplet_id":"{PROPLET}"}}"#),
    );
    subscriber.wait_for(Duration::from_secs(10), |messages| {
        messages
            .iter()
            .any(|m| m.task_id == "e2e-camel" && m.is_final)
    });
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let run = stop(live);

    let received = subscriber.task_messages("control/proplet/task_metrics");
    let last = received
        .iter()
        .find(|m| m.task_id == "e2e-snake" && m.is_final)
        .unwrap();
    assert_eq!(last.proplet_id, PROPLET);
    crate::read_report::<RuntimeTruth>(&report).assert_counted(last);
    let camel_final = received
        .iter()
        .find(|m| m.task_id == "e2e-camel" && m.is_final)
        .unwrap();
    assert!(
        camel_final.metrics.process_count >= 1,
        "stopped while still running"
    );
    assert!(
        run.stderr.contains("e2e-camel stopped by the Manager"),
        "{}",
        run.stderr
    );
}

/// A task living 5 ms is still reported, with its totals.
#[test]
fn a_five_millisecond_task_is_reported() {
    let Some(_serial) = kernel_test() else { return };
    let broker = Broker::start(None);
    let subscriber = Subscriber::start(&broker, None);
    let live = propeller_agent(&broker);
    broker.publish(
        "control/manager/start",
        &format!(r#"{{"id":"blink","proplet_id":"{PROPLET}"}}"#),
    );
    thread::sleep(Duration::from_millis(300));
    let script = format!(
        "exec {} workload busy --seconds 0.005",
        propmon_bin().display()
    );
    let status = Command::new("sh")
        .args(["-c", &script, "/tmp/proplet_blink.wasm"])
        .status()
        .unwrap();
    assert!(status.success());
    subscriber.wait_for(Duration::from_secs(10), |messages| {
        messages.iter().any(|m| m.task_id == "blink" && m.is_final)
    });
    stop(live);
    let received = subscriber.task_messages("control/proplet/task_metrics");
    let last = received.iter().find(|m| m.task_id == "blink").unwrap();
    assert!(last.is_final && last.seq == 1, "{last:?}");
    let cpu = last.metrics.cpu_time_ns.unwrap();
    assert!((4_000_000..100_000_000).contains(&cpu), "{cpu} ns");
    assert_eq!(last.metrics.processes_started, Some(1));
}

/// The broker goes away for 15 s while three tasks report every second:
/// every seq from 1 to the last reaches the subscriber, each exactly once
/// apart from QoS 1 redeliveries (tolerated, and reported).
#[test]
fn a_broker_outage_loses_nothing() {
    let Some(_serial) = kernel_test() else { return };
    let mut broker = Broker::start(None);
    let subscriber = Subscriber::start(&broker, None);
    let sleepers = Sleepers::start(3, 60);
    let mut command = agent(
        &broker.url(),
        &["--profile", "intensive", "--metrics-interval", "1s"],
    );
    command.args(sleepers.attach_args("outage"));
    let live = Live::start(command);
    thread::sleep(Duration::from_secs(3));
    broker.pause();
    thread::sleep(Duration::from_secs(15));
    broker.resume();
    thread::sleep(Duration::from_secs(8)); // reconnects within 5 s
    let run = stop(live);
    drop(sleepers);
    subscriber.wait_for(Duration::from_secs(15), |messages| {
        (0..3).all(|i| {
            messages
                .iter()
                .any(|m| m.task_id == format!("outage-{i}") && m.is_final)
        })
    });

    let received = subscriber.task_messages("control/proplet/task_metrics");
    let mut seqs: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for message in &received {
        seqs.entry(&message.task_id).or_default().push(message.seq);
    }
    assert_eq!(seqs.len(), 3);
    for (task, seen) in &seqs {
        let last = *seen.iter().max().unwrap();
        let distinct: BTreeSet<u64> = seen.iter().copied().collect();
        assert_eq!(distinct, (1..=last).collect(), "{task}: gap in {seen:?}");
        assert!(last >= 22, "{task}: only {last} messages over ~26 s");
        let duplicates = seen.len() - distinct.len();
        eprintln!("{task}: seq 1..={last}, {duplicates} QoS 1 redeliveries");
    }
    assert!(run.stderr.contains("reachable again"), "{}", run.stderr);
    assert!(subscriber.count_on("control/proplet/metrics") >= 15);
}

/// A queue of 5 messages and a broker down for 4 s: the oldest messages
/// are dropped, counted in the proplet-level message and logged; the agent
/// keeps running.
#[test]
fn a_full_queue_drops_the_oldest_and_says_so() {
    let Some(_serial) = kernel_test() else { return };
    let mut broker = Broker::start(None);
    let sleepers = Sleepers::start(3, 30);
    let mut command = agent(
        &broker.url(),
        &[
            "--profile",
            "intensive",
            "--metrics-interval",
            "1s",
            "--mqtt-queue-size",
            "5",
        ],
    );
    command.args(sleepers.attach_args("tiny"));
    let live = Live::start(command);
    thread::sleep(Duration::from_secs(1));
    broker.pause();
    thread::sleep(Duration::from_secs(4));
    broker.resume();
    thread::sleep(Duration::from_secs(2));
    let run = stop(live);
    drop(sleepers);
    let dropped = run
        .stdout_lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|value| value.get("dropped_messages")?.as_u64())
        .max()
        .unwrap_or(0);
    assert!(dropped > 0, "no drops reported: {}", run.stderr);
    assert!(run.stderr.contains("MQTT queue full"), "{}", run.stderr);
    assert!(run.messages.iter().filter(|m| m.is_final).count() == 3);
}

/// Bad control messages are logged and skipped; a good one after them works.
#[test]
fn bad_control_messages_are_skipped() {
    let Some(_serial) = kernel_test() else { return };
    let broker = Broker::start(None);
    let subscriber = Subscriber::start(&broker, None);
    let live = propeller_agent(&broker);
    let huge = format!(
        r#"{{"id":"huge","proplet_id":"{PROPLET}","file":"{}""#,
        "A".repeat(1 << 20)
    );
    let bad = [
        format!(r#"{{"id":"truncated","proplet_id":"{PROPLET}""#),
        format!(r#"{{"id":7,"proplet_id":"{PROPLET}"}}"#),
        format!(r#"{{"id":"types","proplet_id":"{PROPLET}","daemon":"yes"}}"#),
        huge,
        format!(r#"{{"id":"turbo","proplet_id":"{PROPLET}","monitoring_profile":"turbo"}}"#),
        format!(
            r#"{{"id":"zero","proplet_id":"{PROPLET}","monitoring_profile":{{"interval":0}}}}"#
        ),
        r#"{"id":"elsewhere","proplet_id":"another-proplet"}"#.to_owned(),
    ];
    for payload in &bad {
        broker.publish("control/manager/start", payload);
    }
    broker.publish(
        "control/manager/start",
        &format!(r#"{{"id":"good","proplet_id":"{PROPLET}"}}"#),
    );
    thread::sleep(Duration::from_millis(500));
    let status = Command::new("sh")
        .args(["-c", "sleep 0.3", "/tmp/proplet_good.wasm"])
        .status()
        .unwrap();
    assert!(status.success());
    subscriber.wait_for(Duration::from_secs(10), |messages| {
        messages.iter().any(|m| m.task_id == "good" && m.is_final)
    });
    let run = stop(live);
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("ignoring a control message"))
        .collect();
    assert_eq!(warnings.len(), 6, "{}", run.stderr);
    for (fragment, line) in [
        "EOF",
        "invalid type",
        "invalid type",
        "EOF",
        "unknown profile",
        "interval",
    ]
    .iter()
    .zip(&warnings)
    {
        assert!(line.contains(fragment), "{fragment}: {line}");
        assert!(line.len() < 400, "one short line: {line}");
    }
    let received = subscriber.task_messages("control/proplet/task_metrics");
    assert!(received.iter().all(|m| m.task_id == "good"), "{received:?}");
}

/// Wrong password, then an unreachable broker: clear error lines, retries,
/// no crash; the metrics go on to stdout, and reach the broker once it
/// accepts the agent.
#[test]
fn wrong_password_and_unreachable_broker_are_survived() {
    let Some(_serial) = kernel_test() else { return };
    let broker = Broker::start(Some(("agent", "s3cret")));
    let sleeper = Sleepers::start(1, 30);
    let quiet = ["--profile", "intensive", "--enable-monitoring", "false"];
    let mut wrong = agent(&broker.url(), &quiet);
    wrong
        .args(["--mqtt-username", "agent", "--mqtt-password", "nope"])
        .args(sleeper.attach_args("pw"));
    let mut wrong = Live::start(wrong);
    wrong.until(Duration::from_secs(15), |m| m.seq >= 2);
    let run = stop(wrong);
    assert!(
        run.stderr.contains("bad user name or password"),
        "{}",
        run.stderr
    );
    assert!(
        run.messages.len() >= 2,
        "stdout keeps working: {}",
        run.stderr
    );

    let port = free_port();
    let mut unreachable = agent(&format!("mqtt://127.0.0.1:{port}"), &quiet);
    unreachable.args(sleeper.attach_args("pw"));
    let mut unreachable = Live::start(unreachable);
    unreachable.until(Duration::from_secs(15), |m| m.seq >= 2);
    let run = stop(unreachable);
    drop(sleeper);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("cannot connect"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one line, then quiet retries: {}",
        run.stderr
    );
    assert!(run.messages.len() >= 2);
}

/// In-process runtime: a task whose own process never appears is reported
/// through the proplet process, flagged `"attribution":"proplet-process"`.
#[test]
fn in_process_tasks_are_attributed_to_the_proplet() {
    let Some(_serial) = kernel_test() else { return };
    let broker = Broker::start(None);
    let subscriber = Subscriber::start(&broker, None);
    let mut proplet = Command::new(propmon_bin())
        .args(["workload", "busy", "--seconds", "20"])
        .spawn()
        .unwrap();
    let pid = proplet.id().to_string();
    let live = Live::start(agent(
        &broker.url(),
        &[
            "--propeller",
            "--enable-monitoring",
            "false",
            "--proplet-pid",
            &pid,
            "--discovery-grace",
            "300ms",
        ],
    ));
    live.wait_for_log("subscribed to", 1, Duration::from_secs(20));
    broker.publish(
        "control/manager/start",
        &format!(r#"{{"id":"inproc","proplet_id":"{PROPLET}","monitoring_profile":"intensive"}}"#),
    );
    subscriber.wait_for(Duration::from_secs(10), |messages| {
        messages.iter().any(|m| m.task_id == "inproc" && m.seq >= 2)
    });
    broker.publish(
        "control/manager/stop",
        &format!(r#"{{"id":"inproc","proplet_id":"{PROPLET}"}}"#),
    );
    subscriber.wait_for(Duration::from_secs(10), |messages| {
        messages.iter().any(|m| m.task_id == "inproc" && m.is_final)
    });
    stop(live);
    let _ = proplet.kill();
    let _ = proplet.wait();
    let received = subscriber.task_messages("control/proplet/task_metrics");
    assert!(
        received
            .iter()
            .all(|m| m.attribution.as_deref() == Some("proplet-process"))
    );
    let second = received.iter().find(|m| m.seq == 2).unwrap();
    let percent = second.metrics.cpu_percent.unwrap();
    // One busy core, as much of it as the other tests' load leaves.
    assert!(
        (30.0..=115.0).contains(&percent),
        "the busy proplet: {percent}%"
    );
    let last = received.iter().find(|m| m.is_final).unwrap();
    let cpu = last.metrics.cpu_time_ns.unwrap() as f64 / 1e9;
    let uptime = last.metrics.uptime_seconds as f64;
    assert!(
        cpu <= uptime + 1.5,
        "counted from the start message only: {cpu} s"
    );
}

/// mqtts:// with the broker's CA: the messages arrive over TLS; without the
/// CA file, one clear line says what to pass.
#[test]
fn mqtts_with_a_ca_file_delivers() {
    let Some(_serial) = kernel_test() else { return };
    let broker = Broker::start_tls();
    let subscriber = Subscriber::start_with(&broker, None, Some(&broker.ca_file()));
    let url = format!("mqtts://localhost:{}", broker.port);
    let ca_file = broker.ca_file().display().to_string();
    let live = Live::start(agent(
        &url,
        &["--mqtt-ca-file", &ca_file, "--metrics-interval", "1s"],
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscriber.count_on("control/proplet/metrics") < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let run = stop(live);
    assert!(
        subscriber.count_on("control/proplet/metrics") >= 2,
        "nothing over TLS: {}",
        run.stderr
    );
    let output = agent(&url, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--mqtt-ca-file"), "{stderr}");
}

/// Issue 10: hostile start and stop messages. Ids with control characters
/// or over 255 bytes are refused, in one escaped and truncated line that
/// cannot forge another; a start's misspelt field, 10 ms interval and
/// million-sample history are warned about with the task's id, and the
/// task is monitored at the agent's floor of 100 ms.
#[test]
fn hostile_control_messages_are_logged_safely() {
    let Some(_serial) = kernel_test() else { return };
    let broker = Broker::start(None);
    // Retained: the agent gets it whenever its subscription is in place.
    let odd = format!(
        r#"{{"id":"odd","proplet_id":"{PROPLET}","monitoring_profile":
            {{"intervall":1,"interval":"10ms","history_size":1000000}}}}"#
    );
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-r",
        ])
        .args(["-t", &topic("control/manager/start"), "-m", &odd])
        .status()
        .unwrap();
    assert!(status.success());
    let mut live = propeller_agent(&broker);
    let mut runtime = discovered_runtime(&mut live, "odd");
    // The agent is subscribed now: what follows reaches it, in order.
    let forged = "2026-01-01T00:00:00Z  INFO forged";
    broker.publish(
        "control/manager/start",
        &format!(r#"{{"id":"evil\n{forged}\u0000","proplet_id":"{PROPLET}"}}"#),
    );
    broker.publish(
        "control/manager/start",
        &format!(r#"{{"id":"{}","proplet_id":"{PROPLET}"}}"#, "t".repeat(300)),
    );
    broker.publish(
        "control/manager/stop",
        &format!(
            r#"{{"id":"{}\u001b[2J","proplet_id":"{PROPLET}"}}"#,
            "s".repeat(200)
        ),
    );
    broker.publish(
        "control/manager/stop",
        &format!(r#"{{"id":"odd","proplet_id":"{PROPLET}"}}"#),
    );
    live.until(Duration::from_secs(20), |m| {
        m.task_id == "odd" && m.is_final
    });
    let _ = runtime.kill();
    let _ = runtime.wait();
    let run = stop(live);
    let stderr = &run.stderr;
    assert!(!stderr.contains(['\0', '\u{1b}']), "{stderr}");
    assert!(
        !stderr.lines().any(|line| line.starts_with(forged)),
        "a forged line: {stderr}"
    );
    let ignored: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ignoring a control message"))
        .collect();
    assert_eq!(ignored.len(), 3, "{stderr}");
    for (line, expected) in ignored.iter().zip([
        format!(r#"task id "evil\n{forged}\0" contains a control character"#),
        "task id is 300 bytes long; the limit is 255".to_owned(),
        format!(
            r#"task id "{}… (204 bytes)" contains a control"#,
            "s".repeat(64)
        ),
    ]) {
        assert!(line.contains(&expected), "{expected}: {line}");
        assert!(line.len() < 400, "one short line: {line}");
    }
    for expected in [
        r#"task odd: monitoring profile: unknown field "intervall" ignored"#,
        "task odd: monitoring profile: interval 10ms raised to 100ms",
        "task odd: history_size 1000000 cut to 10000 samples",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}

/// A fake host runtime for `task_id` that the agent has found: started
/// again until the agent reports it (its start message may come after the
/// first one's exec).
pub(crate) fn discovered_runtime(live: &mut Live, task_id: &str) -> Child {
    let module = format!("/tmp/proplet_{task_id}.wasm");
    for _ in 0..10 {
        let mut runtime = Command::new("sh")
            .args(["-c", "exec sleep 60", &module])
            .spawn()
            .unwrap();
        if live
            .try_until(Duration::from_secs(3), |m| m.task_id == task_id)
            .is_ok()
        {
            return runtime;
        }
        let _ = runtime.kill();
        let _ = runtime.wait();
    }
    panic!("the agent never found {module}");
}

/// Runs a stand-in for the host runtime of `task` (its module in argv).
fn run_task_process(task: &str) {
    let status = Command::new("sh")
        .args(["-c", "sleep 0.3", &format!("/tmp/proplet_{task}.wasm")])
        .status()
        .unwrap();
    assert!(status.success());
}

pub(crate) fn start_message(task: &str) -> String {
    format!(r#"{{"id":"{task}","proplet_id":"{PROPLET}"}}"#)
}

/// Issue 10, item 9: the session is persistent. A start published while
/// the agent is stopped (SIGTERM) reaches it when it starts again with the
/// same client id, and is acted on; in MQTT 5 and in 3.1.1.
#[test]
fn a_start_sent_while_the_agent_is_stopped_is_acted_on_after_restart() {
    let Some(_serial) = kernel_test() else { return };
    for protocol in ["5", "3.1.1"] {
        let broker = Broker::start(None);
        let subscriber = Subscriber::start(&broker, None);
        let extra = [
            "--propeller",
            "--enable-monitoring",
            "false",
            "--mqtt-protocol",
            protocol,
        ];
        let first = Live::start(agent(&broker.url(), &extra));
        first.wait_for_log("subscribed to", 1, Duration::from_secs(20));
        stop(first);
        let task = format!("away-{}", protocol.replace('.', ""));
        broker.publish("control/manager/start", &start_message(&task));
        let second = Live::start(agent(&broker.url(), &extra));
        let acted_on = format!("task {task}: waiting for its process");
        second.wait_for_log(&acted_on, 1, Duration::from_secs(20));
        run_task_process(&task);
        subscriber.wait_for(Duration::from_secs(15), |messages| {
            messages.iter().any(|m| m.task_id == task && m.is_final)
        });
        stop(second);
    }
}

/// Issue 10, item 9: a start published while the agent's connection is
/// down (the broker being up) reaches it once it reconnects.
#[test]
fn a_start_sent_while_the_connection_is_down_is_acted_on_after_it_returns() {
    let Some(_serial) = kernel_test() else { return };
    let broker = Broker::start(None);
    let subscriber = Subscriber::start(&broker, None);
    let proxy = TcpProxy::start(broker.port);
    let live = Live::start(agent(
        &proxy.url(),
        &["--propeller", "--enable-monitoring", "false"],
    ));
    live.wait_for_log("subscribed to", 1, Duration::from_secs(20));
    proxy.cut();
    live.wait_for_log("retrying", 1, Duration::from_secs(20));
    broker.publish("control/manager/start", &start_message("while-down"));
    proxy.restore();
    live.wait_for_log("reachable again", 1, Duration::from_secs(20));
    live.wait_for_log(
        "task while-down: waiting for its process",
        1,
        Duration::from_secs(20),
    );
    run_task_process("while-down");
    subscriber.wait_for(Duration::from_secs(15), |messages| {
        messages
            .iter()
            .any(|m| m.task_id == "while-down" && m.is_final)
    });
    stop(live);
}

/// Issue 10, item 9: after an outage the broker resumes the session, and
/// rumqttc would send again on its own what was in flight, on top of the
/// queue's replay. Messages sent while the broker's acknowledgements were
/// lost reach the subscriber twice at most (sent, replayed), in order,
/// without a gap.
#[test]
fn a_resumed_session_replays_each_unacknowledged_message_once() {
    let Some(_serial) = kernel_test() else { return };
    let broker = Broker::start(None);
    let subscriber = Subscriber::start(&broker, None);
    let proxy = TcpProxy::start(broker.port);
    let sleepers = Sleepers::start(2, 60);
    let mut command = agent(
        &proxy.url(),
        &["--profile", "intensive", "--enable-monitoring", "false"],
    );
    command.args(sleepers.attach_args("held"));
    let live = Live::start(command);
    let count = || subscriber.count_on("control/proplet/task_metrics");
    let wait_for_count = |at_least: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while count() < at_least {
            assert!(Instant::now() < deadline, "only {} messages", count());
            thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for_count(4);
    proxy.hold(); // messages still arrive, their PUBACKs are lost
    let held_from = count();
    wait_for_count(held_from + 4);
    proxy.cut();
    live.wait_for_log("retrying", 1, Duration::from_secs(20));
    proxy.restore();
    live.wait_for_log("reachable again", 1, Duration::from_secs(20));
    wait_for_count(count() + 4);
    stop(live);
    drop(sleepers);
    subscriber.wait_for(Duration::from_secs(15), |messages| {
        (0..2).all(|i| {
            let task = format!("held-{i}");
            messages.iter().any(|m| m.task_id == task && m.is_final)
        })
    });

    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for message in subscriber.task_messages("control/proplet/task_metrics") {
        seen.entry(message.task_id).or_default().push(message.seq);
    }
    let mut replayed = 0;
    for (task, seqs) in &seen {
        let mut firsts = Vec::new();
        let mut times: BTreeMap<u64, usize> = BTreeMap::new();
        for &seq in seqs {
            *times.entry(seq).or_default() += 1;
            if times[&seq] == 1 {
                firsts.push(seq);
            }
        }
        let last = *times.keys().last().unwrap();
        assert!(firsts.iter().copied().eq(1..=last), "{task}: {seqs:?}");
        assert!(
            times.values().all(|&n| n <= 2),
            "{task}: sent 3 times: {seqs:?}"
        );
        replayed += times.values().filter(|&&n| n == 2).count();
    }
    assert!(replayed >= 2, "nothing was replayed: {seen:?}");
}

/// Issue 10, item 9: a control message above --mqtt-max-message-size does
/// not break the connection. Over MQTT 5 the broker drops it (and logs it,
/// once); over 3.1.1 the agent reads it and drops it with one line. It is
/// not delivered again, and a start sent after it is acted on.
#[test]
fn an_oversize_control_message_is_dropped_once_and_the_connection_stays_up() {
    let Some(_serial) = kernel_test() else { return };
    let huge = format!(
        r#"{{"id":"huge","proplet_id":"{PROPLET}","file":"{}"}}"#,
        "A".repeat(3 << 20)
    );
    for protocol in ["5", "3.1.1"] {
        let broker = Broker::start(None);
        let live = Live::start(agent(
            &broker.url(),
            &[
                "--propeller",
                "--enable-monitoring",
                "false",
                "--mqtt-protocol",
                protocol,
                "--mqtt-max-message-size",
                "1MiB",
            ],
        ));
        live.wait_for_log("subscribed to", 1, Duration::from_secs(20));
        broker.publish("control/manager/start", &huge);
        broker.publish("control/manager/start", &start_message("after-huge"));
        live.wait_for_log(
            "task after-huge: waiting for its process",
            1,
            Duration::from_secs(20),
        );
        thread::sleep(Duration::from_secs(2)); // room for a redelivery, if any
        let run = stop(live);
        for symptom in ["retrying", "reachable again", "closed the connection"] {
            assert!(!run.stderr.contains(symptom), "{protocol}: {}", run.stderr);
        }
        assert!(!run.stderr.contains("task huge"), "{}", run.stderr);
        let agent_drops = run
            .stderr
            .lines()
            .filter(|line| line.contains("control message on") && line.contains("dropped"))
            .count();
        let broker_log = broker.log();
        let broker_drops = broker_log
            .lines()
            .filter(|line| line.contains("Dropping too large outgoing PUBLISH"))
            .count();
        let expected = if protocol == "5" { (0, 1) } else { (1, 0) };
        assert_eq!(
            (agent_drops, broker_drops),
            expected,
            "{protocol}: agent:\n{}\nbroker:\n{broker_log}",
            run.stderr
        );
    }
}

/// Issue 10, item 11: an HTTP server given as the broker gives one line
/// saying that it does not speak MQTT (not rumqttc's "Promised boundary
/// crossed"), then quiet retries.
#[test]
fn a_server_that_does_not_speak_mqtt_is_named_once() {
    let Some(_serial) = kernel_test() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let attempts = Arc::new(Mutex::new(0usize));
    let counted = attempts.clone();
    thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for mut stream in listener.incoming().map_while(Result::ok) {
            *counted.lock().unwrap() += 1;
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n\
                  Content-Length: 46\r\nConnection: close\r\n\r\n\
                  <!DOCTYPE html><html><body>Bad</body></html>\r\n",
            );
        }
    });
    let live = Live::start(agent(
        &format!("mqtt://127.0.0.1:{port}"),
        &["--backend", "sysinfo", "--enable-monitoring", "false"],
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while *attempts.lock().unwrap() < 3 {
        assert!(Instant::now() < deadline, "the agent does not retry");
        thread::sleep(Duration::from_millis(50));
    }
    let run = stop(live);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| line.contains("127.0.0.1"))
        .collect();
    assert_eq!(lines.len(), 1, "one line, then quiet retries: {lines:#?}");
    assert!(
        lines[0].contains(&format!(
            "the server at 127.0.0.1:{port} does not speak MQTT (is this the right port?"
        )),
        "{}",
        lines[0]
    );
}

/// Issue 10, item 15: beside a real proplet (Propeller mode), propmon never
/// writes in a Manager series the proplet owns. By default (the proplet's
/// own monitoring on) its task metrics stay on stdout and its own message
/// goes to control/propmon/metrics; with PROPLET_ENABLE_MONITORING=false
/// (the proplet's monitoring off) it publishes the task metrics, still
/// never on control/proplet/metrics.
#[test]
fn propeller_mode_never_writes_in_the_proplets_series() {
    let Some(_serial) = kernel_test() else { return };
    for (proplet_monitoring, task) in [(None, "beside-default"), (Some("false"), "beside-off")] {
        let broker = Broker::start(None);
        let subscriber = Subscriber::start(&broker, None);
        let mut command = agent(&broker.url(), &["--propeller", "--metrics-interval", "1s"]);
        if let Some(value) = proplet_monitoring {
            command.env("PROPLET_ENABLE_MONITORING", value);
        }
        let live = Live::start(command);
        live.wait_for_log("subscribed to", 1, Duration::from_secs(20));
        broker.publish("control/manager/start", &start_message(task));
        live.wait_for_log(
            &format!("task {task}: waiting for its process"),
            1,
            Duration::from_secs(20),
        );
        run_task_process(task);
        live.wait_for_log(&format!("task {task} ended"), 1, Duration::from_secs(20));
        let deadline = Instant::now() + Duration::from_secs(20);
        while subscriber.count_on("control/propmon/metrics") < 2 {
            assert!(Instant::now() < deadline, "no message of propmon's own");
            thread::sleep(Duration::from_millis(50));
        }
        if proplet_monitoring.is_some() {
            subscriber.wait_for(Duration::from_secs(10), |messages| {
                messages.iter().any(|m| m.task_id == task && m.is_final)
            });
        }
        let run = stop(live);
        assert_eq!(subscriber.count_on("control/proplet/metrics"), 0);
        let published = subscriber.count_on("control/proplet/task_metrics");
        let on_stdout = run.messages.iter().filter(|m| m.task_id == task).count();
        assert!(on_stdout >= 1, "{}", run.stderr);
        let warned = run
            .stderr
            .contains("PROPLET_ENABLE_MONITORING is not false");
        match proplet_monitoring {
            None => assert!(published == 0 && warned, "{published}: {}", run.stderr),
            Some(_) => assert!(published == on_stdout && !warned, "{}", run.stderr),
        }
    }
}
