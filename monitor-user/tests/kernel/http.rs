//! Issue 12: the HTTP listener (`--listen`), its Prometheus exposition and
//! JSON API, the limits that keep slow or hostile clients harmless, and
//! the Grafana dashboard evaluated by a real Prometheus (Debian's
//! `prometheus` and `promtool`, installed by `cargo xtask setup`).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use propmon::message::TaskMetricsMessage;
use serde_json::Value;

use crate::{Live, Sleepers, kernel_test, propmon, propmon_bin, quiet_agent, run_to_end, scratch};

const PROPLET: &str = "http-test";
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/grafana/propmon.json"
);

/// An HTTP response, read to the end (requests are HTTP/1.0: the server
/// closes the connection after answering).
#[derive(Debug)]
struct Reply {
    status: u16,
    /// The head, header names lowercased.
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then_some(value.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }
}

fn exchange(mut stream: impl std::io::Read + std::io::Write, request: &str) -> Reply {
    stream.write_all(request.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let head = head
        .lines()
        .map(|line| match line.split_once(':') {
            Some((key, value)) => format!("{}:{value}", key.to_ascii_lowercase()),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    Reply {
        status,
        head,
        body: body.to_owned(),
    }
}

fn get_request(target: &str, accept: Option<&str>) -> String {
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    format!("GET {target} HTTP/1.0\r\nHost: localhost\r\n{accept}\r\n")
}

fn get(addr: SocketAddr, target: &str, accept: Option<&str>) -> Reply {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    exchange(stream, &get_request(target, accept))
}

/// Starts `command` (an agent or run with `--listen`) and returns it with
/// the address it says it listens on.
fn listening(command: Command) -> (Live, SocketAddr) {
    let live = Live::start(command);
    let said = "serving /metrics and /api/v1/tasks on http://";
    live.wait_for_log(said, 1, Duration::from_secs(30));
    let line = live.log_lines(said).remove(0);
    let addr = line.split(said).nth(1).unwrap().trim().parse().unwrap();
    (live, addr)
}

/// A busy process for the agent to attach: one core, for a long time.
struct Busy(Child);

impl Busy {
    fn start() -> Self {
        let child = Command::new(propmon_bin())
            .args(["workload", "busy", "--seconds", "600"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Busy(child)
    }

    /// A shell that, once told to (a line on its stdin, sent when the agent
    /// follows it), runs `workload net` (TCP, UDP and a refused connection
    /// over IPv4 and IPv6 loopback: peers, and TCP health, that stay in
    /// the task's messages), writes its report to `report`, then becomes
    /// `workload busy`.
    fn after_network(report: &Path) -> Self {
        let child = Command::new("sh")
            .args([
                "-c",
                r#"read go && "$0" workload net --report "$1" && exec "$0" workload busy --seconds 600"#,
            ])
            .arg(propmon_bin())
            .arg(report)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Busy(child)
    }

    /// Lets [`Busy::after_network`] go on.
    fn release(&mut self) {
        let stdin = self.0.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    fn attach(&self, task_id: &str) -> String {
        format!("{task_id}={}", self.0.id())
    }

    fn end(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.end();
    }
}

fn agent_listening(extra: &[&str]) -> Command {
    let mut agent = quiet_agent();
    agent.args(["--listen", "127.0.0.1:0", "--proplet-id", PROPLET]);
    agent.args(extra);
    agent
}

/// The value of the one sample of `page` whose name and labels are
/// `series` exactly.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
}

/// The sum of the samples of `page` whose line starts with `prefix` (a
/// name and the first labels), and how many there are.
fn sum_of(page: &str, prefix: &str) -> (f64, usize) {
    page.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold((0.0, 0), |(sum, count), value| (sum + value, count + 1))
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// `propmon_kernel_programs_attached` of an agent started with `extra`,
/// once it serves it; the agent is stopped after.
fn programs_attached(extra: &[&str]) -> f64 {
    let (live, addr) = listening(agent_listening(extra));
    let series = format!(r#"propmon_kernel_programs_attached{{proplet_id="{PROPLET}"}}"#);
    let mut attached = None;
    wait_until("the programs attached", Duration::from_secs(20), || {
        attached = sample(&get(addr, "/metrics", None).body, &series);
        attached.is_some()
    });
    drop(live);
    attached.unwrap()
}

/// Two hooks each serve one feature and are attached when it is first
/// used, before it is turned on: a plain agent runs no program on the
/// host's execs (Propeller mode's exec discovery) or on its cgroup
/// migrations (tasks defined by cgroups).
#[test]
fn feature_hooks_are_attached_only_with_their_feature() {
    let Some(_serial) = kernel_test() else { return };
    let busy = Busy::start();
    let task = busy.attach("busy");
    let cgroup = crate::cgroup::TestCgroup::create("on-demand");
    let plain = programs_attached(&["--attach", &task]);
    let group = format!("group={}", cgroup.relative);
    let with_cgroup = programs_attached(&["--attach", &task, "--attach-cgroup", &group]);
    // No broker listens there: the agent says so and keeps running.
    let propeller = programs_attached(&[
        "--attach",
        &task,
        "--propeller",
        "--mqtt-url",
        "mqtt://127.0.0.1:9",
        "--domain-id",
        "domain",
        "--channel-id",
        "channel",
    ]);
    assert_eq!(
        with_cgroup,
        plain + 1.0,
        "cgroup_attach_task with a cgroup task"
    );
    assert_eq!(propeller, plain + 1.0, "exec_discovery in Propeller mode");
}

/// Item 1: `/metrics` in both formats and `/api/v1/tasks` follow a task
/// from its first message to its final one, after which it is gone.
#[test]
fn metrics_and_api_follow_a_task_until_its_final_message() {
    let Some(_serial) = kernel_test() else { return };
    let mut busy = Busy::start();
    let (mut live, addr) = listening(agent_listening(&["--attach", &busy.attach("busy")]));
    live.until(Duration::from_secs(20), |m| {
        m.task_id == "busy" && m.seq >= 2
    });

    let page = get(addr, "/metrics", None);
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(
        page.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let labels = format!(r#"{{task_id="busy",proplet_id="{PROPLET}"}}"#);
    let cpu = sample(
        &page.body,
        &format!("propmon_task_cpu_seconds_total{labels}"),
    );
    assert!(cpu.is_some_and(|s| s > 0.0), "busy task CPU: {}", page.body);
    for series in [
        format!("propmon_task_memory_bytes{labels}"),
        format!(
            r#"propmon_task_network_receive_bytes_total{{task_id="busy",proplet_id="{PROPLET}",protocol="tcp"}}"#
        ),
        format!(r#"propmon_agent_tasks{{proplet_id="{PROPLET}"}}"#),
        format!(
            r#"propmon_kernel_map_failed_inserts_total{{proplet_id="{PROPLET}",map="events"}}"#
        ),
        format!(r#"propmon_kernel_map_entries{{proplet_id="{PROPLET}",map="tasks"}}"#),
        format!(r#"propmon_kernel_programs_attached{{proplet_id="{PROPLET}"}}"#),
    ] {
        assert!(
            sample(&page.body, &series).is_some(),
            "no {series}: {}",
            page.body
        );
    }
    // One task slot taken, of --max-tasks (4096 by default).
    let node = format!(r#"{{proplet_id="{PROPLET}",map="tasks"}}"#);
    assert_eq!(
        sample(&page.body, &format!("propmon_kernel_map_entries{node}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&page.body, &format!("propmon_kernel_map_capacity{node}")),
        Some(4096.0)
    );
    // At least the programs every agent needs (eight hooks and the
    // sampling pass; exec discovery and cgroup moves come on demand)
    // attached, and no more than are loaded.
    let programs = |name: &str| {
        let series = format!("{name}{{proplet_id=\"{PROPLET}\"}}");
        sample(&page.body, &series).unwrap_or_else(|| panic!("no {series}: {}", page.body))
    };
    let attached = programs("propmon_kernel_programs_attached");
    assert!(attached >= 9.0, "{}", page.body);
    assert!(programs("propmon_kernel_programs_loaded") >= attached);
    // Without a broker, no exporter series; without --metrics-peers, no peers.
    assert!(!page.body.contains("propmon_agent_mqtt_connected"));
    assert!(!page.body.contains("propmon_task_peer_"));
    let openmetrics = get(addr, "/metrics", Some("application/openmetrics-text"));
    assert_eq!(
        openmetrics.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(
        openmetrics.body.ends_with("# EOF\n"),
        "{}",
        openmetrics.body
    );

    // The API's message is one the agent sent, field for field.
    let listed = get(addr, "/api/v1/tasks", None);
    assert_eq!(listed.header("content-type"), Some("application/json"));
    let tasks = listed.json()["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 1, "{}", listed.body);
    let served: TaskMetricsMessage = serde_json::from_value(tasks[0].clone()).unwrap();
    let same = |m: &TaskMetricsMessage| m.task_id == "busy" && m.seq == served.seq;
    let sent = match live.messages.iter().find(|m| same(m)) {
        Some(sent) => sent.clone(),
        None => live.until(Duration::from_secs(20), same),
    };
    assert_eq!(served, sent);
    let one = get(addr, "/api/v1/tasks/busy", None);
    let one: TaskMetricsMessage = serde_json::from_str(&one.body).unwrap();
    assert!(one.task_id == "busy" && one.seq >= served.seq);
    let missing = get(addr, "/api/v1/tasks/nope", None);
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("nope"));

    busy.end();
    live.until(Duration::from_secs(20), |m| {
        m.task_id == "busy" && m.is_final
    });
    wait_until("the task leaves /metrics", Duration::from_secs(10), || {
        let page = get(addr, "/metrics", None).body;
        !page.contains(r#"task_id="busy""#)
            && sample(
                &page,
                &format!(r#"propmon_agent_tasks{{proplet_id="{PROPLET}"}}"#),
            ) == Some(0.0)
    });
    assert_eq!(get(addr, "/api/v1/tasks/busy", None).status, 404);
    assert_eq!(
        get(addr, "/api/v1/tasks", None).json()["tasks"],
        serde_json::json!([])
    );
    let run = live.terminate();
    assert!(run.status.success(), "{}", run.stderr);
}

/// A running `prometheus`, scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = scratch("prometheus");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: propmon\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("prometheus is not installed: run `cargo xtask setup` (Debian's prometheus)");
        let prometheus = Prometheus { child, addr, dir };
        wait_until("Prometheus ready", Duration::from_secs(60), || {
            TcpStream::connect(addr).is_ok() && prometheus.get("/-/ready").status == 200
        });
        prometheus
    }

    fn get(&self, target: &str) -> Reply {
        get(self.addr, target, None)
    }

    /// An instant query: `Ok(result)`, or `Err` with Prometheus's error.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let reply = self.get(&format!("/api/v1/query?query={}", url_encode(expr)));
        let json = reply.json();
        if json["status"] != "success" {
            return Err(format!("{}: {}", json["errorType"], json["error"]));
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every PromQL expression of the dashboard's panels (rows included).
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    fn walk(panels: &Value, exprs: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                exprs.push(target["expr"].as_str().unwrap().to_owned());
            }
            walk(&panel["panels"], exprs);
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    exprs
}

/// The dashboard's variables as Grafana would substitute them for one
/// task (a regex for `=~`), with Grafana's `$__rate_interval` for a 1 s
/// scrape interval (4 scrape intervals).
fn substitute(expr: &str, task_id: &str) -> String {
    let substituted = expr
        .replace("$__rate_interval", "4s")
        .replace("$proplet", PROPLET)
        .replace("$task", task_id);
    assert!(
        !substituted.contains('$'),
        "a variable the test does not know: {expr}"
    );
    substituted
}

/// Item 2: Prometheus scrapes an agent (publishing to a broker, with
/// per-peer series) that tracks a task which talked to peers and then
/// stays busy; every expression of the dashboard parses and returns series
/// for that task (and its agent); `promtool check metrics` finds nothing
/// to say.
#[test]
fn prometheus_evaluates_every_dashboard_query() {
    let Some(_serial) = kernel_test() else { return };
    let broker = crate::mqtt::Broker::start(None);
    let report = scratch("http-net-report.json");
    let _ = std::fs::remove_file(&report);
    let mut busy = Busy::after_network(&report);
    let url = broker.url();
    let attach = busy.attach("busy");
    let (mut live, addr) = listening(agent_listening(&[
        "--attach",
        &attach,
        "--metrics-peers",
        "--mqtt-url",
        &url,
        "--domain-id",
        "dom",
        "--channel-id",
        "chan",
    ]));
    live.until(Duration::from_secs(20), |m| m.task_id == "busy");
    // Followed from now on: the traffic is the task's.
    busy.release();
    wait_until("workload net done", Duration::from_secs(60), || {
        report.exists()
    });
    let truth: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let sent = |key: &str| truth[key].as_u64().unwrap();
    live.until(Duration::from_secs(20), |m| {
        let network = m.details.network.as_ref();
        m.task_id == "busy"
            && network.is_some_and(|n| {
                n.tcp.tx_bytes >= sent("tcp_tx") && n.udp.tx_bytes >= sent("udp_tx")
            })
    });

    let page = get(addr, "/metrics", None).body;
    let task = format!(r#"{{task_id="busy",proplet_id="{PROPLET}""#);
    // The peers' series add up to the task's, as the message's peers do.
    for direction in ["receive", "transmit"] {
        let (peers, listed) = sum_of(
            &page,
            &format!("propmon_task_peer_{direction}_bytes_total{task}"),
        );
        let (total, _) = sum_of(
            &page,
            &format!("propmon_task_network_{direction}_bytes_total{task}"),
        );
        assert!(
            listed >= 2 && peers > 0.0 && peers == total,
            "{direction}: {page}"
        );
    }
    // IPv6 peers as they are, brackets and colons in a label value.
    assert!(
        page.contains(&format!(
            r#"propmon_task_peer_transmit_bytes_total{task},peer="[::1]:"#
        )),
        "{page}"
    );
    for series in [
        format!("propmon_task_tcp_retransmits_total{task}}}"),
        format!("propmon_task_tcp_failed_connections_total{task}}}"),
        format!("propmon_task_tcp_resets_received_total{task}}}"),
    ] {
        assert!(sample(&page, &series).is_some(), "no {series}: {page}");
    }
    let node = format!(r#"{{proplet_id="{PROPLET}"}}"#);
    assert_eq!(
        sample(&page, &format!("propmon_agent_mqtt_connected{node}")),
        Some(1.0),
        "{page}"
    );
    assert!(sample(&page, &format!("propmon_agent_export_queue_length{node}")).is_some());
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: run `cargo xtask setup` (Debian's prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&checked.stdout) + String::from_utf8_lossy(&checked.stderr);
    assert!(
        checked.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{page}"
    );

    let prometheus = Prometheus::start(addr);
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap())
        .expect("the dashboard is JSON");
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 15, "{exprs:?}");
    // Scrapes every second: allow for a slow start, then a few scrapes.
    let deadline = Instant::now() + Duration::from_secs(120);
    for expr in &exprs {
        let query = substitute(expr, "busy");
        let series = loop {
            let result = prometheus
                .query(&query)
                .unwrap_or_else(|err| panic!("Prometheus refused {query}: {err}"));
            let ours = result.iter().any(|series| {
                let task = &series["metric"]["task_id"];
                task.is_null() || task == "busy"
            });
            if ours {
                break result;
            }
            assert!(
                Instant::now() < deadline,
                "no series for task busy from {query}: {result:?}"
            );
            thread::sleep(Duration::from_millis(500));
        };
        if expr.contains("propmon_task_cpu_seconds_total") {
            // One core busy: well above nothing, on a shared machine too.
            let cores: f64 = series[0]["value"][1].as_str().unwrap().parse().unwrap();
            assert!(cores > 0.1, "{query}: {cores} cores");
        }
    }
    // The variables' label_values(SELECTOR, LABEL) find the task and node.
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(query) = variable["query"].as_str() else {
            continue;
        };
        let Some(inner) = query.strip_prefix("label_values(") else {
            continue;
        };
        let (selector, label) = inner.trim_end_matches(')').rsplit_once(',').unwrap();
        let label = label.trim();
        let result = prometheus.query(&substitute(selector, "busy")).unwrap();
        let values: Vec<&Value> = result.iter().map(|s| &s["metric"][label]).collect();
        let wanted = if label == "task_id" { "busy" } else { PROPLET };
        assert!(values.iter().any(|v| *v == wanted), "{query}: {values:?}");
    }
    drop(prometheus);
    drop(busy);
    let run = live.terminate();
    assert!(run.status.success(), "{}", run.stderr);
    drop(broker);
    let _ = std::fs::remove_file(&report);
}

/// Item 1: the broker's state and the export queue, as the agent sees
/// them: connected, then not (messages wait), then connected again (the
/// queue drains).
#[test]
fn broker_state_and_export_queue_follow_the_broker() {
    let Some(_serial) = kernel_test() else { return };
    let mut broker = crate::mqtt::Broker::start(None);
    let sleepers = Sleepers::start(1, 120);
    let url = broker.url();
    let mut agent = agent_listening(&[
        "--backend",
        "sysinfo",
        "--mqtt-url",
        &url,
        "--domain-id",
        "dom",
        "--channel-id",
        "chan",
        "--mqtt-queue-size",
        "1000",
    ]);
    agent.args(sleepers.attach_args("idle"));
    let (live, addr) = listening(agent);
    let node = format!(r#"{{proplet_id="{PROPLET}"}}"#);
    let gauge = |name: &str| sample(&get(addr, "/metrics", None).body, &format!("{name}{node}"));
    let connected = || gauge("propmon_agent_mqtt_connected");
    let queued = || gauge("propmon_agent_export_queue_length").unwrap_or(-1.0);
    wait_until("connected", Duration::from_secs(20), || {
        connected() == Some(1.0)
    });
    assert_eq!(gauge("propmon_agent_export_queue_capacity"), Some(1000.0));

    broker.pause();
    // A message a second waits meanwhile (the intensive profile).
    wait_until(
        "disconnected, messages waiting",
        Duration::from_secs(30),
        || connected() == Some(0.0) && queued() >= 2.0,
    );
    broker.resume();
    wait_until(
        "reconnected, queue drained",
        Duration::from_secs(30),
        || connected() == Some(1.0) && queued() == 0.0,
    );
    assert_eq!(gauge("propmon_agent_dropped_messages_total"), Some(0.0));
    let run = live.terminate();
    assert!(run.status.success(), "{}", run.stderr);
}

/// Item 1: connections that send nothing, or too much, neither stop the
/// sampling loop nor keep the listener from others for long.
#[test]
fn slow_and_hostile_clients_hold_nothing_for_long() {
    let Some(_serial) = kernel_test() else { return };
    let sleepers = Sleepers::start(1, 120);
    let mut agent = agent_listening(&["--backend", "sysinfo"]);
    agent.args(sleepers.attach_args("idle"));
    let (mut live, addr) = listening(agent);
    let first = live.until(Duration::from_secs(20), |m| m.task_id == "idle-0");

    // Every connection slot taken by clients that never send a request.
    let silent: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(addr).unwrap()).collect();
    thread::sleep(Duration::from_millis(500));
    // Sampling goes on meanwhile: three more messages (1 s apart).
    live.until(Duration::from_secs(20), |m| {
        m.task_id == "idle-0" && m.seq >= first.seq + 3
    });
    // The server drops each of them once its headers are overdue (5 s).
    for mut stream in silent {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut byte = [0u8; 1];
        let read = stream.read(&mut byte);
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // Headers larger than the limit (16 KiB) are refused, not buffered.
    let huge = format!(
        "GET /metrics HTTP/1.0\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut stream_ref = &stream;
    let _ = stream_ref.write_all(huge.as_bytes()); // may be cut off early
    let mut answer = Vec::new();
    let _ = stream_ref.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.0 431")
            || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    // And the listener serves others as before.
    let page = get(addr, "/metrics", None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"task_id="idle-0""#), "{}", page.body);
    let run = live.terminate();
    assert!(run.status.success(), "{}", run.stderr);
}

/// Item 1: a root-only unix socket, a stale one replaced, a live one left
/// alone, and the socket removed when the agent stops.
#[test]
fn a_unix_socket_is_root_only_and_removed_at_exit() {
    use std::os::unix::{fs::PermissionsExt as _, net::UnixStream};
    let dir = scratch("socket-dir");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("metrics.sock");
    // A stale socket, as an agent killed with -9 leaves.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let listen = format!("unix:{}", path.display());
    let mut agent = propmon(&[
        "agent",
        "--backend",
        "sysinfo",
        "--enable-monitoring",
        "false",
    ]);
    agent.args(["--listen", &listen, "--proplet-id", PROPLET]);
    let live = Live::start(agent);
    live.wait_for_log("serving /metrics", 1, Duration::from_secs(30));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let stream = UnixStream::connect(&path).unwrap();
    let page = exchange(stream, &get_request("/metrics", None));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("propmon_agent_info{"), "{}", page.body);
    assert!(
        std::fs::read_dir(&dir).unwrap().count() == 1,
        "nothing left beside the socket"
    );

    // A second agent does not take the first one's socket.
    let mut second = propmon(&["agent", "--backend", "sysinfo", "--listen", &listen]);
    second.stdin(Stdio::null());
    let refused = run_to_end(second, Duration::from_secs(20));
    assert_eq!(refused.status.code(), Some(125), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("another process serves on"),
        "{}",
        refused.stderr
    );

    let run = live.terminate();
    assert!(run.status.success(), "{}", run.stderr);
    assert!(!path.exists(), "the socket is removed at exit");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 1: what cannot be served is one line saying what to do: beyond
/// loopback without asking (2), a taken port or a missing directory (125).
#[test]
fn listen_problems_are_one_clear_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let missing = format!(
        "unix:{}",
        Path::new("/nonexistent/propmon/m.sock").display()
    );
    let agent = |listen: &'static str| vec!["agent", "--backend", "sysinfo", "--listen", listen];
    let taken: &'static str = taken.leak();
    let missing: &'static str = missing.leak();
    for (args, code, expected) in [
        (agent("0.0.0.0:9464"), 2, "is not a loopback address"),
        (agent(":9464"), 2, "expected an IP address and port"),
        (agent(taken), 125, "the address is in use"),
        (
            vec![
                "run",
                "--backend",
                "sysinfo",
                "--listen",
                taken,
                "--",
                "true",
            ],
            125,
            "the address is in use",
        ),
        (
            agent(missing),
            125,
            "the directory /nonexistent/propmon does not exist",
        ),
    ] {
        let mut command = propmon(&args);
        command.stdin(Stdio::null());
        let run = run_to_end(command, Duration::from_secs(20));
        let shown = format!("{args:?}: {}", run.stderr);
        assert_eq!(run.status.code(), Some(code), "{shown}");
        let errors: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("propmon: "))
            .collect();
        assert_eq!(errors.len(), 1, "{shown}");
        assert!(errors[0].contains(expected), "{shown}");
    }
}

/// Item 2: the dashboard imports as is: a datasource variable instead of
/// a fixed datasource, unique panel ids, a query in every graph.
#[test]
fn the_dashboard_is_importable() {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap())
        .expect("the dashboard is JSON");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource")
    );
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for panel in panels {
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{}", panel["title"]);
        if matches!(panel["type"].as_str(), Some("row" | "text")) {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}");
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("propmon_"))
            );
        }
    }
}
