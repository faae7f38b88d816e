//! Operations, end to end through real processes: `GET /metrics` (scraped over HTTP and
//! parsed), the Grafana dashboard's queries against what is exported, and a
//! scheduler without executor plus a separate `sluice worker` on PostgreSQL.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{wait_until, Daemon, PgDb, Sandbox};

/// One scrape: sample lines by series (name plus sorted labels), and the families
/// declared with `# TYPE`.
struct Scrape {
    samples: BTreeMap<String, f64>,
    families: BTreeMap<String, String>,
    content_type: String,
}

impl Scrape {
    /// The value of the series `name{labels}`; labels in any order, absent = None.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&series_key(name, labels)).copied()
    }

    /// Like [`Scrape::get`], 0 when the series is absent (a counter never incremented).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Every sample name a query may use: counters as `NAME_total` (and `_created`),
    /// histograms as `_bucket`, `_sum`, `_count`, gauges as themselves.
    fn queryable_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for (family, kind) in &self.families {
            match kind.as_str() {
                "counter" => {
                    names.insert(format!("{family}_total"));
                    names.insert(format!("{family}_created"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count", "_created"] {
                        names.insert(format!("{family}{s}"));
                    }
                }
                _ => {
                    names.insert(family.clone());
                }
            }
        }
        names
    }
}

fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    format!("{name}{{{}}}", l.join(","))
}

/// Parses the OpenMetrics / Prometheus text exposition.
fn parse_exposition(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let mut samples = BTreeMap::new();
    let mut families = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                panic!("bad TYPE line {line:?}");
            };
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels: Vec<(&str, &str)> = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').expect("label k=v");
                        (k, v.trim_matches('"'))
                    })
                    .collect();
                (name, labels)
            }
        };
        samples.insert(series_key(name, &labels), value);
    }
    (samples, families)
}

fn scrape(url: &str) -> Result<Scrape, String> {
    common::block_on(async {
        let resp = reqwest::get(url).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        assert!(
            text.ends_with("# EOF\n"),
            "an OpenMetrics exposition ends with # EOF:\n{text}"
        );
        let (samples, families) = parse_exposition(&text);
        Ok(Scrape {
            samples,
            families,
            content_type,
        })
    })
}

/// The address a daemon printed after `prefix` (e.g. `Metrics at http://`), up to the
/// next `/`.
fn printed_addr(d: &Daemon, prefix: &str) -> String {
    wait_until(
        &format!("the process to print {prefix:?}"),
        Duration::from_secs(30),
        &[d],
        || {
            let out = d.stdout();
            out.lines()
                .find_map(|l| {
                    let rest = &l[l.find(prefix)? + prefix.len()..];
                    Some(rest.split('/').next()?.to_string())
                })
                .ok_or(out)
        },
    )
}

const PROBE_DAG: &str = r#"[dag]
id = "metrics_probe"

[tasks.read]
kind = "csv"
path = "rows.csv"

[tasks.transform]
kind = "noop"
upstream = ["read"]

[tasks.load]
kind = "noop"
upstream = ["transform"]
"#;

const FAILING_DAG: &str = r#"[dag]
id = "metrics_fail"

[tasks.boom]
kind = "shell"
command = "exit 3"
retries = 1
retry_delay = "0s"
"#;

const SLOW_DAG: &str = r#"[dag]
id = "metrics_marked"

[tasks.wait]
kind = "shell"
command = "sleep 60"
"#;

#[test]
fn metrics_count_tries_runs_and_records_of_a_standalone_process() {
    let _serial = common::serial();
    let sb = Sandbox::new();
    std::fs::write(
        sb.path().join("rows.csv"),
        "id,name\n1,a\n2,b\n3,c\n4,d\n5,e\n",
    )
    .unwrap();
    sb.write_dag("probe.toml", PROBE_DAG);
    sb.write_dag("fail.toml", FAILING_DAG);
    sb.write_dag("marked.toml", SLOW_DAG);
    let mut standalone = sb.spawn(&["standalone"]);
    standalone.wait_ready();
    let addr = printed_addr(&standalone, "REST API listening on http://");
    let url = format!("http://{addr}/metrics");

    // No credentials: Prometheus scrapes without any, while the API beside it still
    // wants them.
    let before = scrape(&url).expect("first scrape");
    let api_status = common::block_on(async {
        reqwest::get(format!("http://{addr}/api/v2/dags"))
            .await
            .expect("GET /api/v2/dags")
            .status()
    });
    assert_eq!(api_status, reqwest::StatusCode::UNAUTHORIZED);
    assert!(
        before
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        before.content_type
    );
    assert_eq!(before.get("sluice_store_up", &[]), Some(1.0));
    let success = [
        ("dag_id", "metrics_probe"),
        ("kind", "noop"),
        ("state", "success"),
    ];
    assert_eq!(before.value("sluice_task_tries_total", &success), 0.0);

    sb.ok(&["dags", "trigger", "metrics_probe"]);
    sb.ok(&["dags", "trigger", "metrics_fail"]);
    for dag in ["metrics_probe", "metrics_fail"] {
        sb.wait_runs(
            dag,
            "the run to finish",
            Duration::from_secs(60),
            &[&standalone],
            |runs| {
                runs.len() == 1
                    && ["success", "failed"].contains(&runs[0]["state"].as_str().unwrap_or(""))
            },
        );
    }
    // The run's end is recorded before the executor counts it (off the hot loop):
    // wait for the count rather than assume it.
    let after = wait_until(
        "the finished runs to be counted",
        Duration::from_secs(10),
        &[&standalone],
        || {
            let s = scrape(&url)?;
            let done = s.value(
                "sluice_dag_runs_finished_total",
                &[("dag_id", "metrics_probe"), ("state", "success")],
            ) == 1.0
                && s.value(
                    "sluice_dag_runs_finished_total",
                    &[("dag_id", "metrics_fail"), ("state", "failed")],
                ) == 1.0;
            if done {
                Ok(s)
            } else {
                Err(format!("{:#?}", s.samples))
            }
        },
    );

    // Tries by DAG, kind and state: two noops and one csv succeeded; the shell task
    // failed once into its retry, then for good.
    assert_eq!(after.value("sluice_task_tries_total", &success), 2.0);
    assert_eq!(
        after.value(
            "sluice_task_tries_total",
            &[
                ("dag_id", "metrics_probe"),
                ("kind", "csv"),
                ("state", "success")
            ]
        ),
        1.0
    );
    for state in ["up_for_retry", "failed"] {
        assert_eq!(
            after.value(
                "sluice_task_tries_total",
                &[
                    ("dag_id", "metrics_fail"),
                    ("kind", "shell"),
                    ("state", state)
                ]
            ),
            1.0,
            "{state}"
        );
    }
    // The duration histogram saw every try, by kind, and its buckets add up.
    let count =
        |kind: &str| after.value("sluice_task_try_duration_seconds_count", &[("kind", kind)]);
    assert_eq!(count("noop"), 2.0);
    assert_eq!(count("csv"), 1.0);
    assert_eq!(count("shell"), 2.0);
    assert_eq!(
        after.value(
            "sluice_task_try_duration_seconds_bucket",
            &[("kind", "shell"), ("le", "+Inf")]
        ),
        2.0
    );
    // Records the csv kind read.
    assert_eq!(
        after.value("sluice_task_records_in_total", &[("kind", "csv")]),
        5.0
    );
    assert_eq!(
        after.value("sluice_task_records_failed_total", &[("kind", "csv")]),
        0.0
    );
    // The scheduler loop ran and was timed; nothing is queued or running any more.
    assert!(after.value("sluice_scheduler_loop_duration_seconds_count", &[]) >= 1.0);
    for state in ["scheduled", "queued", "running", "up_for_retry"] {
        assert_eq!(
            after.get("sluice_task_instances", &[("state", state)]),
            Some(0.0),
            "{state}"
        );
    }
    assert_eq!(after.get("sluice_executor_running_tries", &[]), Some(0.0));
    assert_eq!(after.get("sluice_executor_parallelism", &[]), Some(32.0));

    // Runs finished through the API count too, once each: a run marked failed
    // (twice: the second changes nothing), and a run whose last task instance is
    // marked successful.
    let password = printed_addr(&standalone, "Login with username admin and password ");
    let password = password
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let patch = |path: &str, body: serde_json::Value| {
        common::block_on(async {
            reqwest::Client::new()
                .patch(format!("http://{addr}/api/v2/dags/metrics_marked/{path}"))
                .basic_auth("admin", Some(&password))
                .json(&body)
                .send()
                .await
                .expect("PATCH through the API")
                .status()
        })
    };
    for (run_id, path, body) in [
        (
            "marked_run",
            "dagRuns/marked_run",
            serde_json::json!({"state": "failed"}),
        ),
        (
            "marked_task",
            "dagRuns/marked_task/taskInstances/wait",
            serde_json::json!({"new_state": "success"}),
        ),
    ] {
        sb.ok(&["dags", "trigger", "metrics_marked", "--run-id", run_id]);
        sb.wait_runs(
            "metrics_marked",
            "the run to start",
            Duration::from_secs(30),
            &[&standalone],
            |runs| {
                runs.iter()
                    .any(|r| r["run_id"] == run_id && r["state"] == "running")
            },
        );
        for _ in 0..2 {
            assert_eq!(patch(path, body.clone()), reqwest::StatusCode::OK, "{path}");
        }
    }
    let marked = scrape(&url).expect("scrape after marking");
    for state in ["failed", "success"] {
        assert_eq!(
            marked.value(
                "sluice_dag_runs_finished_total",
                &[("dag_id", "metrics_marked"), ("state", state)]
            ),
            1.0,
            "{state}: {:#?}",
            marked.samples
        );
    }
}

/// Fails if the Grafana dashboard queries a metric that none of `scrapes` exports
/// (families without samples are not exposed, so pass scrapes taken while there was
/// something to count).
fn assert_dashboard_queries_exported_metrics(scrapes: &[&Scrape]) {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/dashboards/sluice.json"
        ))
        .expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let exported: BTreeSet<String> = scrapes.iter().flat_map(|s| s.queryable_names()).collect();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has queries: {exprs:?}");
    let queried = metric_names(&exprs);
    for n in &queried {
        assert!(
            exported.contains(n),
            "the dashboard queries {n}, which /metrics does not export (exported: {exported:?})"
        );
    }
    assert!(queried.contains("sluice_task_tries_total"), "{queried:?}");
}

/// Every `expr` in the dashboard JSON, wherever it is nested.
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `sluice_…` metric names in PromQL expressions.
fn metric_names(exprs: &[String]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(at) = rest.find("sluice_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

const CHAIN_DAG: &str = r#"[dag]
id = "split_roles"

[defaults]
kind = "noop"

[tasks.a]
[tasks.b]
upstream = ["a"]
[tasks.c]
upstream = ["b"]
"#;

#[test]
fn a_scheduler_without_executor_and_a_separate_worker_run_a_dag_on_postgres() {
    let _serial = common::serial();
    let pg = PgDb::new();
    let mut sb = Sandbox::new();
    sb.set_env("SLUICE_DATABASE_URL", &pg.url());
    sb.write_dag("chain.toml", CHAIN_DAG);

    let mut scheduler = sb.spawn(&["scheduler", "--no-executor", "--metrics-port", "0"]);
    scheduler.wait_ready();
    assert!(
        !scheduler.log().contains("executor started"),
        "--no-executor starts no executor:\n{}",
        scheduler.log()
    );
    let sched_metrics = format!(
        "http://{}/metrics",
        printed_addr(&scheduler, "Metrics at http://")
    );
    sb.ok(&["dags", "trigger", "split_roles"]);
    // The scheduler starts the run and schedules its root; nobody runs it: the queue
    // depth the scheduler exports shows it waiting.
    let waiting = wait_until(
        "the root task to wait in the queue",
        Duration::from_secs(30),
        &[&scheduler],
        || {
            let s = scrape(&sched_metrics)?;
            match s.get("sluice_task_instances", &[("state", "scheduled")]) {
                Some(1.0) => Ok(s),
                other => Err(format!("scheduled = {other:?}")),
            }
        },
    );
    assert_eq!(
        waiting.get(
            "sluice_dag_runs",
            &[("dag_id", "split_roles"), ("state", "running")]
        ),
        Some(1.0)
    );

    let worker = sb.spawn(&["worker", "--metrics-port", "0"]);
    let worker_metrics = format!(
        "http://{}/metrics",
        printed_addr(&worker, "Metrics at http://")
    );
    let runs = sb.wait_runs(
        "split_roles",
        "the run to succeed",
        Duration::from_secs(60),
        &[&scheduler, &worker],
        |runs| runs.len() == 1 && runs[0]["state"] == "success",
    );
    let run_id = runs[0]["run_id"].as_str().expect("run_id").to_string();

    // Every try ran on the worker process (its id carries its pid).
    let records = common::task_records(&pg.url(), "split_roles", &run_id);
    let worker_pid = format!("-{}-", worker.pid());
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r.tries.len(), 1, "{}", r.ti.task_id);
        assert!(
            r.tries[0].owner.contains(&worker_pid),
            "{} ran on {} (worker pid {})",
            r.ti.task_id,
            r.tries[0].owner,
            worker.pid()
        );
    }

    // The worker counted the tries; it exports no store gauges (the scheduler does).
    let w = scrape(&worker_metrics).expect("scrape the worker");
    assert_eq!(
        w.value(
            "sluice_task_tries_total",
            &[
                ("dag_id", "split_roles"),
                ("kind", "noop"),
                ("state", "success")
            ]
        ),
        3.0
    );
    assert_eq!(
        w.get("sluice_task_instances", &[("state", "scheduled")]),
        None
    );
    assert_eq!(
        w.value("sluice_scheduler_loop_duration_seconds_count", &[]),
        0.0
    );
    let s = scrape(&sched_metrics).expect("scrape the scheduler");
    assert_eq!(
        s.value(
            "sluice_task_tries_total",
            &[
                ("dag_id", "split_roles"),
                ("kind", "noop"),
                ("state", "success")
            ]
        ),
        0.0
    );
    assert_eq!(s.get("sluice_executor_parallelism", &[]), Some(0.0));
    assert!(s.value("sluice_scheduler_loop_duration_seconds_count", &[]) >= 1.0);

    // What Prometheus sees of this deployment covers every query of the dashboard.
    assert_dashboard_queries_exported_metrics(&[&waiting, &w, &s]);
    drop(worker);
    drop(scheduler);
}

#[test]
fn workers_hear_of_new_work_at_once_through_postgres_notifications() {
    let _serial = common::serial();
    let pg = PgDb::new();
    let mut sb = Sandbox::new();
    sb.set_env("SLUICE_DATABASE_URL", &pg.url());
    // Both loops would otherwise look for work only every 10 s.
    sb.set_env("SLUICE_SCHEDULER__LOOP_INTERVAL_MS", "10000");
    sb.write_dag("chain.toml", CHAIN_DAG);
    let mut scheduler = sb.spawn(&["scheduler", "--no-executor"]);
    scheduler.wait_ready();
    let worker = sb.spawn(&["worker"]);
    wait_until(
        "the worker to start",
        Duration::from_secs(30),
        &[&worker],
        || {
            let log = worker.log();
            if log.contains("executor started") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    // Let both loops finish their first pass and go to sleep for 10 s, so that a run
    // finishing quickly can only be the notifications' doing. (This wait can only
    // make the test stricter: nothing below depends on it to pass.)
    let settled = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(50));
    }

    let triggered = std::time::Instant::now();
    sb.ok(&["dags", "trigger", "split_roles"]);
    let runs = sb.wait_runs(
        "split_roles",
        "the run to succeed long before any 10 s poll",
        Duration::from_secs(5),
        &[&scheduler, &worker],
        |runs| runs.len() == 1 && runs[0]["state"] == "success",
    );
    let elapsed = triggered.elapsed();
    let run_id = runs[0]["run_id"].as_str().expect("run_id");
    let records = common::task_records(&pg.url(), "split_roles", run_id);
    let root = common::record(&records, "a");
    let run_started = common::parse_time(&runs[0]["start_date"]);
    let claim_ms = (root.tries[0].start_date - run_started)
        .num_microseconds()
        .unwrap_or(0) as f64
        / 1000.0;
    eprintln!(
        "trigger -> run succeeded in {elapsed:?}; run started -> root claimed by the worker in {claim_ms:.1} ms"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "the notifications woke the scheduler and the worker"
    );
    assert!(
        claim_ms < 2000.0,
        "claimed {claim_ms} ms after the run started"
    );
}
