//! Prometheus metrics (`GET /metrics`, OpenMetrics text format).
//!
//! Two sources, chosen for what stays correct when several processes share one
//! database:
//! - **Process counters and histograms**: what this process did (tries it ran, their
//!   durations and records, runs its executor or scheduler finished, its scheduler
//!   passes). In-memory atomics, recorded on the hot path without any query. Every
//!   process exports its own; sum them across instances (`sum(rate(…))`).
//! - **Store gauges**, read from the database at scrape time (task instances waiting or
//!   running, DAG runs queued or running): the same for every process that exports
//!   them (the API and the scheduler; workers do not), so aggregate them with `max`.
//!   The queries read only active rows through partial indexes.
//!
//! Labels stay bounded: DAG ids and kind names come from DAG files, never from runs,
//! map indexes or records; the duration histogram is labelled by kind only.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sluice_store::{Outcome, RunState, Store};
use sluice_tasks::MetricsSnapshot;

/// The content type of the OpenMetrics text format, which Prometheus negotiates.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// States of task instances the store gauges report (finished ones would need a scan).
const ACTIVE_TI_STATES: [&str; 4] = ["scheduled", "up_for_retry", "queued", "running"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TryLabels {
    dag_id: String,
    kind: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    dag_id: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 ms … ~2.3 h in 24 doubling buckets: noop tries and hour-long crawls both land
    // in a bucket that means something.
    Histogram::new(exponential_buckets(0.001, 2.0, 24))
}

fn loop_histogram() -> Histogram {
    // 0.1 ms … ~3.3 s: a pass is normally a few milliseconds.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric of a process. Cheap to share (`Arc`); recording is lock-free or takes
/// a short uncontended lock, never I/O.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tries: Family<TryLabels, Counter>,
    try_duration: HistogramFamily<KindLabels>,
    records_in: Family<KindLabels, Counter>,
    records_out: Family<KindLabels, Counter>,
    records_failed: Family<KindLabels, Counter>,
    bytes_in: Family<KindLabels, Counter>,
    bytes_out: Family<KindLabels, Counter>,
    runs_finished: Family<RunLabels, Counter>,
    scheduler_loop: Histogram,
    running_tries: Gauge,
    parallelism: Gauge,
    task_instances: Family<StateLabels, Gauge>,
    dag_runs: Family<RunLabels, Gauge>,
    store_up: Gauge,
    /// Serialises scrapes: the store gauges are reset and refilled, then encoded.
    scrape: tokio::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let tries = Family::<TryLabels, Counter>::default();
        registry.register(
            "sluice_task_tries",
            "Task tries this process ran, by DAG, task kind and the state the try left the task instance in (success, up_for_retry, failed, interrupted)",
            tries.clone(),
        );
        let try_duration: HistogramFamily<KindLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "sluice_task_try_duration_seconds",
            "Wall time of the task tries this process ran, by task kind",
            try_duration.clone(),
        );
        let kind_counter = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<KindLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let records_in = kind_counter(
            &mut registry,
            "sluice_task_records_in",
            "Records the tries of this process read, by task kind",
        );
        let records_out = kind_counter(
            &mut registry,
            "sluice_task_records_out",
            "Records the tries of this process wrote, by task kind",
        );
        let records_failed = kind_counter(
            &mut registry,
            "sluice_task_records_failed",
            "Records a sink failed to write, by task kind: kind=kafka_produce counts Kafka deliveries that failed, kind=es_index documents the Elasticsearch bulk API did not index",
        );
        let bytes_in = kind_counter(
            &mut registry,
            "sluice_task_bytes_in",
            "Bytes the tries of this process read, by task kind",
        );
        let bytes_out = kind_counter(
            &mut registry,
            "sluice_task_bytes_out",
            "Bytes the tries of this process wrote, by task kind",
        );
        let runs_finished = Family::<RunLabels, Counter>::default();
        registry.register(
            "sluice_dag_runs_finished",
            "DAG runs this process's executor or scheduler finished (success, failed), by DAG",
            runs_finished.clone(),
        );
        let scheduler_loop = loop_histogram();
        registry.register(
            "sluice_scheduler_loop_duration_seconds",
            "Time of one scheduling pass (create due runs, start queued runs, time-outs, reaping)",
            scheduler_loop.clone(),
        );
        let running_tries = Gauge::default();
        registry.register(
            "sluice_executor_running_tries",
            "Tries this process's executor is running now",
            running_tries.clone(),
        );
        let parallelism = Gauge::default();
        registry.register(
            "sluice_executor_parallelism",
            "How many tries this process's executor runs at once at most (0: no executor)",
            parallelism.clone(),
        );
        let task_instances = Family::<StateLabels, Gauge>::default();
        registry.register(
            "sluice_task_instances",
            "Task instances in the store waiting or running, by state, read at scrape time; state=scheduled is the queue depth (runnable, waiting for a worker)",
            task_instances.clone(),
        );
        let dag_runs = Family::<RunLabels, Gauge>::default();
        registry.register(
            "sluice_dag_runs",
            "DAG runs in the store queued or running, by DAG, read at scrape time",
            dag_runs.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "sluice_store_up",
            "1 if the last scrape could read the metadata store, else 0 (absent in processes that export no store gauges)",
            store_up.clone(),
        );
        let info = Family::<VersionLabels, Gauge>::default();
        info.get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        registry.register("sluice_build_info", "The running Sluice version", info);
        Metrics {
            registry,
            tries,
            try_duration,
            records_in,
            records_out,
            records_failed,
            bytes_in,
            bytes_out,
            runs_finished,
            scheduler_loop,
            running_tries,
            parallelism,
            task_instances,
            dag_runs,
            store_up,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// A finished try: its outcome, wall time and I/O. Placeholders of mapped tasks
    /// (which only expand) are not tries of a kind and are not counted.
    pub fn record_try(
        &self,
        dag_id: &str,
        kind: &str,
        outcome: &Outcome,
        will_retry: bool,
        elapsed: Duration,
        io: &MetricsSnapshot,
    ) {
        let state = match outcome {
            Outcome::Success(_) => "success",
            Outcome::Failed { .. } if will_retry => "up_for_retry",
            Outcome::Failed { .. } => "failed",
            Outcome::Interrupted { .. } => "interrupted",
            Outcome::Expand { .. } => return,
        };
        self.tries
            .get_or_create(&TryLabels {
                dag_id: dag_id.to_string(),
                kind: kind.to_string(),
                state,
            })
            .inc();
        let k = KindLabels {
            kind: kind.to_string(),
        };
        self.try_duration
            .get_or_create(&k)
            .observe(elapsed.as_secs_f64());
        for (family, value) in [
            (&self.records_in, io.records_in),
            (&self.records_out, io.records_out),
            (&self.records_failed, io.records_failed),
            (&self.bytes_in, io.bytes_in),
            (&self.bytes_out, io.bytes_out),
        ] {
            // Every kind gets all five series, so rate() over a sum sees zeros, not gaps.
            family.get_or_create(&k).inc_by(value);
        }
    }

    pub fn run_finished(&self, dag_id: &str, state: RunState) {
        self.runs_finished
            .get_or_create(&RunLabels {
                dag_id: dag_id.to_string(),
                state: state.as_str().to_string(),
            })
            .inc();
    }

    pub fn scheduler_pass(&self, elapsed: Duration) {
        self.scheduler_loop.observe(elapsed.as_secs_f64());
    }

    pub fn try_started(&self) {
        self.running_tries.inc();
    }

    pub fn try_ended(&self) {
        self.running_tries.dec();
    }

    pub fn set_parallelism(&self, n: usize) {
        self.parallelism.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The exposition: the store gauges refreshed from `store` first when given.
    pub async fn render(&self, store: Option<&Store>) -> String {
        let _one_at_a_time = self.scrape.lock().await;
        if let Some(store) = store {
            // A scrape must answer even when the database does not: the process
            // counters are still true.
            let counts = tokio::time::timeout(Duration::from_secs(5), store.active_counts()).await;
            match counts {
                Ok(Ok(counts)) => {
                    self.store_up.set(1);
                    for state in ACTIVE_TI_STATES {
                        let n = counts
                            .task_instances
                            .iter()
                            .filter(|(s, _)| s == state)
                            .map(|(_, n)| *n)
                            .sum();
                        self.task_instances
                            .get_or_create(&StateLabels { state })
                            .set(n);
                    }
                    // Runs that are no longer active disappear instead of lingering.
                    self.dag_runs.clear();
                    for (dag_id, state, n) in counts.dag_runs {
                        self.dag_runs
                            .get_or_create(&RunLabels { dag_id, state })
                            .set(n);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!("metrics: cannot read the store: {e}");
                    self.store_up.set(0);
                }
                Err(_) => {
                    tracing::warn!("metrics: reading the store took over 5 s");
                    self.store_up.set(0);
                }
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `GET /metrics` on `metrics`, with store gauges from `store` when given. No
/// authentication: the exposition holds counts, DAG ids and kind names only (as
/// Airflow's StatsD/OpenTelemetry exporters, which need none); keep the port on a
/// private network as the API's.
pub fn router(metrics: Arc<Metrics>, store: Option<Store>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            let store = store.clone();
            async move {
                let body = metrics.render(store.as_ref()).await;
                ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body)
            }
        }),
    )
}

/// Serves [`router`] alone (schedulers and workers, which have no API) until
/// `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: Option<Store>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, store))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
