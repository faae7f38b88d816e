//! `sluice bench`: the scheduler's own overhead, measured with noop tasks.
//!
//! Two DAGs per database: a chain of N noops (each waits for the previous: measures
//! the gap from a task's end to its downstream's start) and a fan-out of M noops
//! (all runnable at once: measures task instances per second). Times come from the
//! try records the store keeps, so they include every transaction on the hot path.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, Context};
use clap::Args;
use serde_json::json;
use sluice_core::loader::load_file;
use sluice_store::scratch::ScratchDatabase;
use sluice_store::{now, NewRun, Store};
use sluice_tasks::Registry;

use crate::config::Config;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// Other benchmarks (without one: the scheduler's overhead with noop DAGs).
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Where to measure: `sqlite` (a temporary file) or a PostgreSQL URL, on which a
    /// fresh database is created and dropped afterwards. Repeat to measure several.
    #[arg(long = "database", default_value = "sqlite")]
    pub databases: Vec<String>,
    /// Length of the chain DAG.
    #[arg(long, default_value_t = 200)]
    pub chain: usize,
    /// Width of the fan-out DAG.
    #[arg(long, default_value_t = 2000)]
    pub fanout: usize,
    /// Executor parallelism (default: the configured one).
    #[arg(long)]
    pub parallelism: Option<usize>,
    /// Print one JSON object per measurement.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// The news_crawl DAG's crawl against the news fixture (30 sites × 7 categories, 50 ms
    /// per page): wall time with the DAG's concurrency against a serial crawl.
    NewsCrawl(crate::bench_crawl::CrawlBenchArgs),
}

struct Measurement {
    database: String,
    shape: String,
    tasks: usize,
    wall_s: f64,
    ti_per_s: f64,
    gap_median_ms: f64,
    gap_p95_ms: f64,
}

pub async fn run(cfg: &Config, args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(BenchCommand::NewsCrawl(crawl)) = args.command {
        return crate::bench_crawl::run(cfg, crawl).await;
    }
    let mut results = Vec::new();
    for db in &args.databases {
        let (url, cleanup) = prepare_database(db).await?;
        let outcome = async {
            let label = if db == "sqlite" {
                "sqlite".to_string()
            } else {
                "postgres".to_string()
            };
            let chain = chain_dag(args.chain);
            let m = measure(cfg, &args, &url, &label, "chain", &chain, args.chain).await?;
            print_measurement(&m, args.json);
            results.push(m);
            let fan = fanout_dag(args.fanout);
            let m = measure(cfg, &args, &url, &label, "fanout", &fan, args.fanout).await?;
            print_measurement(&m, args.json);
            results.push(m);
            anyhow::Ok(())
        }
        .await;
        if let Some(cleanup) = cleanup {
            cleanup.await?;
        }
        outcome?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_measurement(m: &Measurement, json: bool) {
    if json {
        println!(
            "{}",
            json!({
                "database": m.database, "shape": m.shape, "tasks": m.tasks, "wall_s": m.wall_s,
                "task_instances_per_s": m.ti_per_s, "gap_median_ms": m.gap_median_ms, "gap_p95_ms": m.gap_p95_ms,
            })
        );
    } else {
        println!(
            "{:<9} {:<7} {:>5} tasks  {:>8.3} s  {:>8.0} task instances/s  gap median {:>6.2} ms  p95 {:>6.2} ms",
            m.database, m.shape, m.tasks, m.wall_s, m.ti_per_s, m.gap_median_ms, m.gap_p95_ms
        );
    }
}

fn chain_dag(n: usize) -> String {
    let mut s = String::from("[dag]\nid = \"bench_chain\"\n\n");
    for i in 0..n {
        s.push_str(&format!("[tasks.t{i}]\nkind = \"noop\"\n"));
        if i > 0 {
            s.push_str(&format!("upstream = [\"t{}\"]\n", i - 1));
        }
    }
    s
}

fn fanout_dag(n: usize) -> String {
    let mut s = String::from("[dag]\nid = \"bench_fanout\"\nmax_active_tasks = 100000\n\n[tasks.start]\nkind = \"noop\"\n");
    for i in 0..n {
        s.push_str(&format!(
            "[tasks.t{i}]\nkind = \"noop\"\nupstream = [\"start\"]\n"
        ));
    }
    s
}

type Cleanup = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

/// A URL to measure on, and how to clean it up.
async fn prepare_database(db: &str) -> anyhow::Result<(String, Option<Cleanup>)> {
    if db == "sqlite" {
        let dir = tempfile::Builder::new().prefix("sluice-bench-").tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let cleanup: Cleanup = Box::pin(async move {
            drop(dir);
            Ok(())
        });
        return Ok((url, Some(cleanup)));
    }
    if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
        return Err(anyhow!(
            "--database takes `sqlite` or a postgres:// URL, got {db}"
        ));
    }
    let db = ScratchDatabase::create(db, "sluice_bench_")
        .await
        .context("cannot create the benchmark database")?;
    let url = db.url.clone();
    let cleanup: Cleanup = Box::pin(async move { Ok(db.drop_database().await?) });
    Ok((url, Some(cleanup)))
}

async fn measure(
    cfg: &Config,
    args: &BenchArgs,
    url: &str,
    label: &str,
    shape: &str,
    source: &str,
    tasks: usize,
) -> anyhow::Result<Measurement> {
    let home = tempfile::Builder::new()
        .prefix("sluice-bench-home-")
        .tempdir()?;
    let file = home.path().join(format!("{shape}.toml"));
    std::fs::write(&file, source)?;
    let registry = Registry::builtin();
    let dag = load_file(&file, &registry).map_err(|d| anyhow!("bench DAG invalid: {}", d[0]))?;
    let store = Store::connect(url).await?;
    store.migrate().await?;
    store.set_pool("default_pool", 1_000_000, None).await?;
    let mut bench_cfg = cfg.clone();
    bench_cfg.home = home.path().to_path_buf();
    if let Some(p) = args.parallelism {
        bench_cfg.parallelism = p;
    }
    let started = Instant::now();
    let run = crate::local_run::run_to_completion(
        &store,
        &registry,
        crate::executor_config(&bench_cfg)?,
        &dag,
        NewRun::manual(&dag.dag_id, now(), None, json!({})),
    )
    .await?;
    let wall = started.elapsed();
    let state = store
        .run_by_pk(run.id)
        .await?
        .map(|r| r.state)
        .unwrap_or_default();
    anyhow::ensure!(state == "success", "bench run ended {state}");
    let tries = store.run_tries(run.id).await?;
    store.close().await;
    let mut starts = std::collections::HashMap::new();
    let mut ends = std::collections::HashMap::new();
    for (task_id, t) in &tries {
        starts.insert(task_id.clone(), t.start_date);
        if let Some(e) = t.end_date {
            ends.insert(task_id.clone(), e);
        }
    }
    let mut gaps: Vec<f64> = Vec::new();
    let measured: Vec<String> = (0..tasks).map(|i| format!("t{i}")).collect();
    if shape == "chain" {
        for i in 1..tasks {
            let (Some(end), Some(start)) = (
                ends.get(&format!("t{}", i - 1)),
                starts.get(&format!("t{i}")),
            ) else {
                continue;
            };
            gaps.push((*start - *end).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    } else if let Some(root_end) = ends.get("start") {
        for t in &measured {
            if let Some(s) = starts.get(t) {
                gaps.push((*s - *root_end).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            }
        }
        // For a fan-out the gap that matters is the first child's.
        gaps.sort_by(|a, b| a.total_cmp(b));
        gaps.truncate(1);
    }
    gaps.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if gaps.is_empty() {
            return f64::NAN;
        }
        let idx = ((gaps.len() - 1) as f64 * p).round() as usize;
        gaps[idx]
    };
    let first_start = measured.iter().filter_map(|t| starts.get(t)).min().copied();
    let last_end = measured.iter().filter_map(|t| ends.get(t)).max().copied();
    let span_s = match (first_start, last_end) {
        (Some(a), Some(b)) => (b - a).num_microseconds().unwrap_or(1) as f64 / 1e6,
        _ => f64::NAN,
    };
    Ok(Measurement {
        database: label.to_string(),
        shape: shape.to_string(),
        tasks,
        wall_s: wall.as_secs_f64(),
        ti_per_s: tasks as f64 / span_s,
        gap_median_ms: pct(0.5),
        gap_p95_ms: pct(0.95),
    })
}
