//! `GET /metrics` in Prometheus' text format: requests by adapter, route and status, the
//! latency histogram by adapter and route, the queue's depth, and the batches' sizes in
//! requests, padded tokens and adapters.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub adapter: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub adapter: String,
    pub route: String,
}

type HistogramMaker = fn() -> Histogram;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, HistogramMaker>,
    queue: Gauge<i64, AtomicI64>,
    batch_requests: Histogram,
    batch_tokens: Histogram,
    batch_adapters: Histogram,
    batch_forwards: Histogram,
}

fn latency_buckets() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("peft");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: Family<LatencyLabels, Histogram, HistogramMaker> =
            Family::new_with_constructor(latency_buckets);
        let queue = Gauge::<i64, AtomicI64>::default();
        let batch_requests = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let batch_tokens = Histogram::new(exponential_buckets(16.0, 2.0, 14));
        let batch_adapters = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        let batch_forwards = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        registry.register("requests", "Requests answered", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer",
            latency.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for the model",
            queue.clone(),
        );
        registry.register(
            "batch_requests",
            "Requests per batch",
            batch_requests.clone(),
        );
        registry.register(
            "batch_tokens",
            "Tokens per batch, each forward's rows padded to their longest",
            batch_tokens.clone(),
        );
        registry.register(
            "batch_adapters",
            "Adapters (and the base) whose requests a batch mixed",
            batch_adapters.clone(),
        );
        registry.register(
            "batch_forwards",
            "Forwards a batch ran: rows of adapters that stack share them, cut by length",
            batch_forwards.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            queue,
            batch_requests,
            batch_tokens,
            batch_adapters,
            batch_forwards,
        }
    }
}

impl Metrics {
    pub fn answered(&self, adapter: &str, route: &str, status: u16, seconds: f64) {
        let (adapter, route) = (adapter.to_string(), route.to_string());
        self.requests
            .get_or_create(&RequestLabels {
                adapter: adapter.clone(),
                route: route.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels { adapter, route })
            .observe(seconds);
    }

    pub fn enqueued(&self) {
        self.queue.inc();
    }

    /// `n` requests left the queue (negative: one put back).
    pub fn dequeued(&self, n: i64) {
        self.queue.dec_by(n);
    }

    pub fn batch(&self, requests: usize, tokens: usize, adapters: usize) {
        self.batch_requests.observe(requests as f64);
        self.batch_tokens.observe(tokens as f64);
        self.batch_adapters.observe(adapters as f64);
    }

    pub fn forwards(&self, n: usize) {
        self.batch_forwards.observe(n as f64);
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
