//! The process's Prometheus metrics, on the Prometheus project's own client
//! (`prometheus-client`), rendered in the OpenMetrics text format. This
//! module only keeps the names short at the call sites: `counter`, `gauge`
//! and `histogram` register and return a handle whose hot path is an
//! atomic (a histogram: a short bucket search and two atomics).

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter as ClientCounter;
use prometheus_client::metrics::gauge::Gauge as ClientGauge;
use prometheus_client::metrics::histogram::Histogram as ClientHistogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Default)]
pub struct Counter(ClientCounter<u64, AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.inc();
    }
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

#[derive(Default)]
pub struct Gauge(ClientGauge<i64, AtomicI64>);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.set(v);
    }
    pub fn add(&self, v: i64) {
        self.0.inc_by(v);
    }
    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

/// A distribution of observations (latencies), in seconds.
pub struct Histogram(ClientHistogram);

impl Histogram {
    pub fn observe(&self, v: f64) {
        self.0.observe(v);
    }
    pub fn observe_duration(&self, d: std::time::Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

/// Buckets for latencies inside the service: 0.5 ms to about 16 s,
/// doubling, so a p99 of a few milliseconds and a stall of seconds are both
/// told apart.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16)
}

/// A counter whose value is read when scraped.
#[derive(Clone)]
struct CounterFn(Arc<dyn Fn() -> u64 + Send + Sync>);

impl std::fmt::Debug for CounterFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CounterFn").field(&(self.0)()).finish()
    }
}

impl prometheus_client::metrics::TypedMetric for CounterFn {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Counter;
}

impl prometheus_client::encoding::EncodeMetric for CounterFn {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&(self.0)(), None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}

/// The process's metrics. Names carry the process prefix and unit
/// (`chat_server_sessions`, `api_http_requests_total`).
#[derive(Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    /// `name` ends in `_total`, as the exposition shows it.
    pub fn counter(&self, name: &str, help: &str) -> Arc<Counter> {
        let c = Arc::new(Counter::default());
        // The client adds the `_total` suffix of counters itself.
        let base = name.strip_suffix("_total").unwrap_or(name);
        self.register(base, help, c.0.clone());
        c
    }

    pub fn gauge(&self, name: &str, help: &str) -> Arc<Gauge> {
        let g = Arc::new(Gauge::default());
        self.register(name, help, g.0.clone());
        g
    }

    /// A counter read from `read` at each scrape: for counts another
    /// component keeps (the store's group commit) without a timer copying
    /// them over.
    pub fn counter_fn(
        &self,
        name: &str,
        help: &str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        let base = name.strip_suffix("_total").unwrap_or(name);
        self.register(base, help, CounterFn(Arc::new(read)));
    }

    /// One [`Self::counter_fn`] per field of a snapshot that `read` takes
    /// at each scrape, named `<prefix>_<name>`.
    pub fn counters_fn<S: 'static>(
        &self,
        prefix: &str,
        read: impl Fn() -> S + Send + Sync + 'static,
        fields: &[(&str, &str, fn(&S) -> u64)],
    ) {
        let read = Arc::new(read);
        for (name, help, field) in fields {
            let (read, field) = (read.clone(), *field);
            self.counter_fn(&format!("{prefix}_{name}"), help, move || field(&read()));
        }
    }

    /// A histogram of `name` (ending in `_seconds`) with `buckets`.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: impl IntoIterator<Item = f64>,
    ) -> Arc<Histogram> {
        let inner = ClientHistogram::new(buckets);
        let h = Arc::new(Histogram(inner.clone()));
        self.register(name, help, inner);
        h
    }

    fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        // The client appends a full stop itself.
        let help = help.strip_suffix('.').unwrap_or(help);
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, help, metric);
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_text() {
        let m = Metrics::new();
        let c = m.counter("x_total", "Things.");
        let g = m.gauge("y", "Level.");
        let h = m.histogram("z_seconds", "Latency.", [0.001, 0.01]);
        m.counter_fn("w_total", "Read when scraped.", || 7);
        c.add(3);
        g.set(-2);
        h.observe(0.005);
        let text = m.render();
        assert!(
            text.contains("# HELP x Things.\n# TYPE x counter\nx_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP y Level.\n# TYPE y gauge\ny -2\n"),
            "{text}"
        );
        assert!(text.contains("z_seconds_bucket{le=\"0.01\"} 1\n"), "{text}");
        assert!(text.contains("z_seconds_count 1\n"), "{text}");
        assert!(text.contains("# TYPE w counter\nw_total 7\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
