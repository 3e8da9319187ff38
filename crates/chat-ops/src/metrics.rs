//! A small Prometheus registry: counters and gauges as atomics, rendered in
//! the text exposition format. The hot path only touches an atomic; the
//! registry lock is taken when a metric is created and when it is scraped.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
}

struct Entry {
    name: String,
    help: String,
    metric: Metric,
}

/// The process's metrics. Names should carry the process prefix and unit
/// (`chat_server_sessions`, `api_http_requests_total`).
#[derive(Default)]
pub struct Metrics {
    entries: Mutex<Vec<Entry>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    pub fn counter(&self, name: &str, help: &str) -> Arc<Counter> {
        let c = Arc::new(Counter::default());
        self.push(name, help, Metric::Counter(c.clone()));
        c
    }

    pub fn gauge(&self, name: &str, help: &str) -> Arc<Gauge> {
        let g = Arc::new(Gauge::default());
        self.push(name, help, Metric::Gauge(g.clone()));
        g
    }

    fn push(&self, name: &str, help: &str, metric: Metric) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Entry {
                name: name.to_owned(),
                help: help.to_owned(),
                metric,
            });
    }

    pub fn render(&self) -> String {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for e in entries.iter() {
            let (kind, value) = match &e.metric {
                Metric::Counter(c) => ("counter", c.get() as i64),
                Metric::Gauge(g) => ("gauge", g.get()),
            };
            let _ = writeln!(out, "# HELP {} {}", e.name, e.help);
            let _ = writeln!(out, "# TYPE {} {}", e.name, kind);
            let _ = writeln!(out, "{} {}", e.name, value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        let c = m.counter("x_total", "Things.");
        let g = m.gauge("y", "Level.");
        c.add(3);
        g.set(-2);
        let text = m.render();
        assert!(text.contains("# TYPE x_total counter\nx_total 3\n"));
        assert!(text.contains("# HELP y Level.\n# TYPE y gauge\ny -2\n"));
    }
}
