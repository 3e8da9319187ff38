//! The metric names the chart's monitoring pack queries exist in what runs.
//!
//! `scripts/validate-k8s.py` renders the chart with monitoring on, parses
//! every PromQL expression of its PrometheusRule and Grafana dashboard and
//! keeps the metric names they select in `scripts/k8s/monitoring-metrics.txt`
//! (and fails when that file drifts from the chart). This test takes that
//! list and checks each name against the processes it belongs to:
//!
//! - `api_*` in `/metrics` of a real api-server, `chat_server_*` in
//!   `/metrics` of a real chat-server, both running against the test Redis
//!   Cluster;
//! - `operator_*` in the operator's source: the operator needs a Kubernetes
//!   API server to start, so its names are read from the `counter(`/`gauge(`
//!   registrations in its code instead of a scrape;
//! - names of other exporters (`up` from Prometheus itself,
//!   `kube_*` from kube-state-metrics) only against the short list below,
//!   since nothing here runs those exporters.
//!
//! A name with any other prefix fails the test. A name the list marks
//! `counter` (the queries read it with rate, irate, increase or resets) must
//! also be exposed or registered as a counter.

use std::collections::BTreeMap;
use std::path::PathBuf;

use e2e::*;

/// Series other software produces; the monitoring pack may query these.
const EXTERNAL: &[&str] = &[
    // Prometheus: one per scrape target, 1 when the scrape succeeded.
    "up",
    // kube-state-metrics: pod readiness conditions.
    "kube_pod_status_ready",
];

/// (name, read as a counter) for every line of the list.
fn monitoring_metrics() -> Vec<(String, bool)> {
    let path = workspace_root().join("scripts/k8s/monitoring-metrics.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let names: Vec<(String, bool)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next().unwrap_or_default().to_owned();
            (name, words.next() == Some("counter"))
        })
        .collect();
    assert!(
        names.len() >= 5,
        "{} lists only {} names",
        path.display(),
        names.len()
    );
    names
}

/// Metric names in an OpenMetrics (or Prometheus text) exposition with
/// their `# TYPE` (`untyped` for samples without one). OpenMetrics names a
/// counter's family without the `_total` its sample carries, and a
/// histogram's without `_bucket`, `_sum` and `_count`: those sample names
/// get the family's type.
fn exposed_names(exposition: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                let samples: &[&str] = match kind {
                    "counter" => &["", "_total"],
                    "histogram" => &["", "_bucket", "_sum", "_count"],
                    _ => &[""],
                };
                for suffix in samples {
                    names.insert(format!("{name}{suffix}"), kind.to_owned());
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names
                .entry(line[..end].to_owned())
                .or_insert_with(|| "untyped".to_owned());
        }
    }
    names
}

async fn scrape(http_url: &str) -> BTreeMap<String, String> {
    let text = reqwest::get(format!("{http_url}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("/metrics body");
    exposed_names(&text)
}

/// The names the operator registers, with their kind: the first string
/// literal after each `.counter(`, `.gauge(` or `.histogram(` in its sources.
fn operator_source_names() -> BTreeMap<String, String> {
    let root = workspace_root();
    let dir = root.join("operator/src");
    let mut names = BTreeMap::new();
    let mut stack: Vec<PathBuf> = vec![dir];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let code = std::fs::read_to_string(&path).expect("read source");
                for call in [".counter(", ".gauge(", ".histogram("] {
                    for (at, _) in code.match_indices(call) {
                        let rest = &code[at + call.len()..];
                        let Some(open) = rest.find('"') else { continue };
                        // only a literal that is the call's first argument
                        if !rest[..open].trim().is_empty() {
                            continue;
                        }
                        if let Some(len) = rest[open + 1..].find('"') {
                            let kind = call.trim_matches(|c| c == '.' || c == '(');
                            names
                                .insert(rest[open + 1..open + 1 + len].to_owned(), kind.to_owned());
                        }
                    }
                }
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_query_exists() {
    let wanted = monitoring_metrics();
    let Some(cluster) = Cluster::start(1, &[]).await else {
        return;
    };
    let api = scrape(&cluster.api_url).await;
    let chat = scrape(&cluster.chat[0].http_url()).await;
    let operator = operator_source_names();
    assert!(
        api.contains_key("api_http_requests_total") && chat.contains_key("chat_server_sessions"),
        "the scrapes look wrong: api {api:?}, chat {chat:?}"
    );
    assert!(
        operator.contains_key("operator_reconciles_total"),
        "no operator metric found in its sources: {operator:?}"
    );

    let mut missing = Vec::new();
    for (name, as_counter) in &wanted {
        let (kind, source) = if name.starts_with("api_") {
            (api.get(name).cloned(), "api-server /metrics")
        } else if name.starts_with("chat_server_") {
            (chat.get(name).cloned(), "chat-server /metrics")
        } else if name.starts_with("operator_") {
            (operator.get(name).cloned(), "operator sources")
        } else {
            let known = EXTERNAL.contains(&name.as_str());
            // other exporters' names: presence only
            (known.then(|| "counter".to_owned()), "the external list")
        };
        match kind {
            None => missing.push(format!("{name} (looked in {source})")),
            // A histogram's series are cumulative, as a counter's are.
            Some(kind) if *as_counter && kind != "counter" && kind != "histogram" => missing.push(
                format!("{name} is read with rate/increase but is a {kind} ({source})"),
            ),
            Some(_) => {}
        }
    }
    assert!(
        missing.is_empty(),
        "metrics queried by the chart's dashboard or alerts that nothing exposes as queried: {missing:?}\n\
         api-server exposes {api:?}\nchat-server exposes {chat:?}\noperator registers {operator:?}"
    );
    println!(
        "{} metric names checked: api-server {}, chat-server {}, operator (source) {}",
        wanted.len(),
        api.len(),
        chat.len(),
        operator.len()
    );
}

#[test]
fn exposed_names_reads_types_samples_and_labels() {
    let text = "# HELP a A.\n# TYPE a counter\na_total 1\nb_bucket{le=\"1\"} 2\n\
                # TYPE c_seconds histogram\nc_seconds_count 1\n# EOF\n";
    let names = exposed_names(text);
    let kind = |k: &str| k.to_owned();
    assert_eq!(
        names,
        BTreeMap::from([
            ("a".to_owned(), kind("counter")),
            ("a_total".to_owned(), kind("counter")),
            ("b_bucket".to_owned(), kind("untyped")),
            ("c_seconds".to_owned(), kind("histogram")),
            ("c_seconds_bucket".to_owned(), kind("histogram")),
            ("c_seconds_count".to_owned(), kind("histogram")),
            ("c_seconds_sum".to_owned(), kind("histogram")),
        ])
    );
}

/// Group commit (issue 13) shows in `/metrics`: every WebSocket send's
/// append is counted, batched or alone, on the chat server that stored it.
/// So does how each append came by the room's presence index: sent with
/// the first, held for the others (nobody connected or left between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_counters_count_every_append() {
    const SENDS: u64 = 30;
    let Some(cluster) = Cluster::start(1, &[]).await else {
        return;
    };
    let alice_id = unique("alice");
    let alice = cluster.api(&alice_id).await;
    let room = alice.create_room_id("batched", &[]).await;
    let mut ws = WsClient::connect(&alice).await;
    for i in 0..SENDS {
        ws.send_message(&room, &format!("m{i}"), Some(&format!("c{i}")))
            .await;
        ws.next_of_type("ack", WAIT).await.expect("ack");
    }
    let chat = cluster.chat[0].http_url();
    let read = |name: &'static str| {
        let chat = chat.clone();
        async move { scrape_metric(&chat, name).await.unwrap_or(0.0) as u64 }
    };
    let batched = read("chat_server_appends_batched_total").await;
    let alone = read("chat_server_appends_alone_total").await;
    let batches = read("chat_server_append_batches_total").await;
    println!("[group-commit] batches {batches}, batched {batched}, alone {alone}");
    assert_eq!(batched + alone, SENDS, "every append counted once");
    assert!(
        batched > 0 && batches > 0,
        "appends went through group commit"
    );
    let sent = read("chat_server_presence_index_sent_total").await;
    let reused = read("chat_server_presence_index_reused_total").await;
    println!("[presence-index] sent {sent}, reused {reused}");
    assert_eq!((sent, reused), (1, SENDS - 1));
}
