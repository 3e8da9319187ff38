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
//! A name with any other prefix fails the test.

use std::collections::BTreeSet;
use std::path::PathBuf;

use e2e::*;

/// Series other software produces; the monitoring pack may query these.
const EXTERNAL: &[&str] = &[
    // Prometheus: one per scrape target, 1 when the scrape succeeded.
    "up",
    // kube-state-metrics: pod readiness conditions.
    "kube_pod_status_ready",
];

fn monitoring_metrics() -> Vec<String> {
    let path = workspace_root().join("scripts/k8s/monitoring-metrics.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert!(
        names.len() >= 5,
        "{} lists only {} names",
        path.display(),
        names.len()
    );
    names
}

/// Metric names in a Prometheus text exposition (`# TYPE` lines and
/// samples, labels and histogram suffixes kept as exposed).
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                return rest.split_whitespace().next().map(str::to_owned);
            }
            if line.starts_with('#') || line.trim().is_empty() {
                return None;
            }
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            Some(line[..end].to_owned())
        })
        .collect()
}

async fn scrape(http_url: &str) -> BTreeSet<String> {
    let text = reqwest::get(format!("{http_url}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("/metrics body");
    exposed_names(&text)
}

/// The names the operator registers: the first string literal after each
/// `.counter(` or `.gauge(` in its sources.
fn operator_source_names() -> BTreeSet<String> {
    let root = workspace_root();
    let dir = [root.join("crates/operator/src"), root.join("operator/src")]
        .into_iter()
        .find(|d| d.is_dir())
        .expect("the operator's sources (crates/operator/src or operator/src)");
    let mut names = BTreeSet::new();
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
                            names.insert(rest[open + 1..open + 1 + len].to_owned());
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
        api.contains("api_http_requests_total") && chat.contains("chat_server_sessions"),
        "the scrapes look wrong: api {api:?}, chat {chat:?}"
    );
    assert!(
        operator.contains("operator_reconciles_total"),
        "no operator metric found in its sources: {operator:?}"
    );

    let mut missing = Vec::new();
    for name in &wanted {
        let (found, source) = if name.starts_with("api_") {
            (api.contains(name), "api-server /metrics")
        } else if name.starts_with("chat_server_") {
            (chat.contains(name), "chat-server /metrics")
        } else if name.starts_with("operator_") {
            (operator.contains(name), "operator sources")
        } else {
            (EXTERNAL.contains(&name.as_str()), "the external list")
        };
        if !found {
            missing.push(format!("{name} (looked in {source})"));
        }
    }
    assert!(
        missing.is_empty(),
        "metrics queried by the chart's dashboard or alerts that nothing exposes: {missing:?}\n\
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
    let text = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\nb_bucket{le=\"1\"} 2\n\n";
    let names = exposed_names(text);
    assert_eq!(
        names,
        BTreeSet::from(["a_total".to_owned(), "b_bucket".to_owned()])
    );
}
