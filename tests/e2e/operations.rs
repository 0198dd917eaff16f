//! The operator's kit matches what the processes export: every metric the
//! Prometheus alerts (`deploy/prometheus/alerts.yml`) and the Grafana board
//! (`deploy/grafana/tether.json`) name is in a real scrape of a relay, the hub
//! or an agent, the board's queries are valid PromQL, and the rules pass promtool's check and
//! their unit tests (`alerts_test.yml`); every scrape passes `promtool check
//! metrics`.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use hyper::Method;
use tether::agent::operator::{Request, request};

use crate::harness::*;
use crate::hub::{hub_client, hub_fleet};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file)
}

/// Metric families in a Prometheus text exposition (every family has a TYPE line).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

/// `tether_…` names in a file, with histogram suffixes taken off.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("tether_") {
        let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
        out.insert(base.to_string());
    }
    out
}

/// `promtool check metrics` parses the exposition and finds nothing to lint.
fn lint(text: &str) {
    use std::io::Write;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        return; // the_alert_rules_pass_promtool says SKIPPED, or fails in CI
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check metrics: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_board_name_is_exported() {
    let fleet = hub_fleet("").await;
    let s = fleet.session("echo").await;
    drop(within(30, s.connect()).await.unwrap());
    let mut exported = BTreeSet::new();
    for i in 0..fleet.relays.len() {
        let text = fleet.metrics(i).await;
        // The admin port's answer, headers and all: lint the body.
        lint(text.split_once("\r\n\r\n").map_or(text.as_str(), |(_, body)| body));
        exported.extend(families(&text));
    }
    let (status, hub) = hub_client(&fleet).call(Method::GET, "/metrics", None, None).await.unwrap();
    assert!(status.is_success());
    let hub = String::from_utf8_lossy(&hub);
    lint(&hub);
    exported.extend(families(&hub));
    let agent = request(&fleet.socket(), &Request::Metrics).await.unwrap();
    lint(agent["text"].as_str().unwrap());
    exported.extend(families(agent["text"].as_str().unwrap()));

    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let names = named(&rules);
    assert!(names.len() >= 10, "the alerts name only {names:?}");
    let missing: Vec<_> = names.difference(&exported).collect();
    assert!(missing.is_empty(), "alerts name metrics nobody exports: {missing:?}");
    let board = board_queries().join("\n");
    let names = named(&board);
    assert!(names.len() >= 20, "the board names only {names:?}");
    let missing: Vec<_> = names.difference(&exported).collect();
    assert!(missing.is_empty(), "the Grafana board names metrics nobody exports: {missing:?}");
}

/// Every query of `deploy/grafana/tether.json`, with its panel's title.
fn board_queries() -> Vec<String> {
    let board: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/tether.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in board["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "panel {} must use the board's data source",
                panel["title"]
            );
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    out
}

/// Whether promtool is here; CI must have it (`.ci/run` installs it).
fn promtool() -> bool {
    let here = Command::new("promtool").arg("--version").output().is_ok();
    if !here {
        assert!(std::env::var("CI").is_err(), "promtool is not installed but CI must run this test");
        eprintln!("SKIPPED: promtool is not installed (apt-get install -y --no-install-recommends prometheus)");
    }
    here
}

/// Each query of the board is valid PromQL: promtool checks them as
/// recording rules (the relay selector `$relay` taken as every relay).
#[test]
fn the_board_queries_are_valid_promql() {
    if !promtool() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: board\n    rules:\n");
    for (i, q) in board_queries().iter().enumerate() {
        let expr = serde_json::to_string(&q.replace("$relay", ".*")).unwrap();
        rules += &format!("      - record: tether_board_query_{i}\n        expr: {expr}\n");
    }
    let path = dir.path().join("board.yml");
    std::fs::write(&path, rules).unwrap();
    let out = Command::new("promtool").args(["check", "rules"]).arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("SUCCESS"), "{text}");
}

#[test]
fn the_alert_rules_pass_promtool() {
    if !promtool() {
        return;
    }
    let dir = deploy("prometheus");
    // The example scrape config names a CA file that exists where it is
    // deployed: check a copy pointing at the dev CA.
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let scrape = std::fs::read_to_string(dir.join("prometheus.yml")).unwrap();
    let scrape = scrape
        .replace("/etc/prometheus/tether-fleet-ca.pem", pki.path("ca.pem").to_str().unwrap())
        .replace("- alerts.yml", &format!("- {}", dir.join("alerts.yml").display()));
    std::fs::write(tmp.path().join("prometheus.yml"), scrape).unwrap();
    let out =
        Command::new("promtool").args(["check", "config"]).arg(tmp.path().join("prometheus.yml")).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("SUCCESS"), "promtool check config:\n{text}");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]] {
        let out = Command::new("promtool").args(args).current_dir(&dir).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
        assert!(text.contains("SUCCESS"), "{text}");
    }
}

/// The example configs in `deploy/` are what the binaries read: every key
/// known (the config types refuse unknown ones), every value of its type.
#[test]
fn the_example_configs_in_deploy_parse() {
    let read = |f: &str| std::fs::read_to_string(deploy(f)).unwrap();
    let relay: tether::relay::RelayConfig = toml::from_str(&read("relay.toml")).unwrap();
    assert!(relay.hub.is_some() && relay.twin.is_some(), "the relay example reports to the hub and has a twin");
    let hub: tether::hub::HubConfig = toml::from_str(&read("hub.toml")).unwrap();
    assert_eq!(hub.relays.len(), 2);
    let agent: tether::agent::AgentConfig = toml::from_str(&read("agent.toml")).unwrap();
    assert_eq!(agent.relays.len(), 2);
}

/// A healthy fleet, scraped for real, fires no alert: `promtool test rules`
/// over ten minutes of each relay's and the hub's scrape held steady. And
/// each part lists its own families and the shared ones, not another
/// part's at zero: the hub used to list `tether_relay_ready 0`, and
/// `TetherRelayNotReady` fired for it after two minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_fleet_fires_no_alert_and_each_part_lists_its_own_metrics() {
    let fleet = hub_fleet("").await;
    fleet.wait_twin_links().await;
    let s = fleet.session("echo").await;
    drop(within(30, s.connect()).await.unwrap());
    let mut scrapes = Vec::new();
    for i in 0..fleet.relays.len() {
        let text = fleet.metrics(i).await;
        let body = text.split_once("\r\n\r\n").map_or(text.as_str(), |(_, b)| b).to_string();
        scrapes.push(("tether-relay", format!("relay-{i}:17090"), body));
    }
    let (_, hub) = hub_client(&fleet).call(Method::GET, "/metrics", None, None).await.unwrap();
    scrapes.push(("tether-hub", "hub:17010".into(), String::from_utf8_lossy(&hub).into()));
    let agent = request(&fleet.socket(), &Request::Metrics).await.unwrap()["text"].as_str().unwrap().to_string();

    let own = |text: &str, needs: &str, others: &[&str]| {
        let fams = families(text);
        assert!(fams.contains(needs), "{needs} missing: {fams:?}");
        assert!(fams.contains("tether_tls_handshakes_total") && fams.contains("tether_process_resident_memory_bytes"));
        let foreign: Vec<_> = fams.iter().filter(|f| others.iter().any(|p| f.starts_with(p))).collect();
        assert!(foreign.is_empty(), "another part's metrics listed beside {needs}: {foreign:?}");
    };
    own(&scrapes[0].2, "tether_relay_ready", &["tether_hub_", "tether_agent_"]);
    own(&scrapes[2].2, "tether_hub_database_up", &["tether_relay_", "tether_twin_", "tether_agent_"]);
    own(&agent, "tether_agent_control_channel_up", &["tether_relay_", "tether_twin_", "tether_hub_"]);

    if !promtool() {
        return;
    }
    let mut series = String::new();
    for (job, instance, text) in &scrapes {
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (metric, value) = line.rsplit_once(' ').unwrap();
            let labelled = match metric.split_once('{') {
                Some((name, rest)) => format!("{name}{{job=\"{job}\",instance=\"{instance}\",{rest}"),
                None => format!("{metric}{{job=\"{job}\",instance=\"{instance}\"}}"),
            };
            let values = format!("{value} ").repeat(11);
            series +=
                &format!("      - series: '{}'\n        values: '{}'\n", labelled.replace('\'', "''"), values.trim());
        }
    }
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let mut quiet = String::new();
    for a in &alerts {
        quiet += &format!("      - eval_time: 10m\n        alertname: {a}\n        exp_alerts: []\n");
    }
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("healthy.yml");
    let text = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    alert_rule_test:\n{quiet}",
        deploy("prometheus/alerts.yml").display()
    );
    std::fs::write(&test, text).unwrap();
    let out = Command::new("promtool").args(["test", "rules"]).arg(&test).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("SUCCESS"), "a healthy fleet fires alerts:\n{said}");
}

/// A relay runs on the threads its `[limits] threads` names (one: the
/// dev setup's), and on one per core without it; its start line says what
/// its runtime has, and a relay on one thread carries a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_runs_on_the_threads_its_config_names() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cores = std::thread::available_parallelism().unwrap().get();
    let default = Fleet::start(Opts::default()).await;
    assert_eq!(default.relays[0].threads, cores, "one per core without the setting");
    drop(default);
    let one = Fleet::start(Opts { relay_limits: "threads = 1", ..Opts::default() }).await;
    assert_eq!(one.relays[0].threads, 1);
    let s = one.session("echo").await;
    let mut t = s.connect().await.unwrap();
    t.write_all(b"one thread").await.unwrap();
    let mut got = [0u8; 10];
    t.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"one thread");
    s.close();
    // A count past any machine's is a config problem, named, at start.
    let cfg = std::fs::read_to_string(one.tmp.path().join("relay-a.toml")).unwrap();
    let wrong = one.tmp.path().join("relay-wrong.toml");
    std::fs::write(&wrong, cfg.replace("threads = 1", "threads = 5000")).unwrap();
    let out = Command::new(BIN).args(["relay", "--config"]).arg(&wrong).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("limits.threads: at most 1024"), "{err}");
}
