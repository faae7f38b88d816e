//! `sluice bench news-crawl`: the `news_crawl` DAG's crawl against the news fixture
//! (N sites × 7 categories, a delay per page, each site on its own port), once with the
//! DAG's own concurrency and once serially, with the wall time of each and the speed-up.
//!
//! The crawl task is the shipped DAG's (`dags/news_crawl.toml`: selectors, follow
//! rules, depth, politeness), run through the executor as a mapped task over the sites;
//! only its start URLs are pointed at the fixture's per-site ports, and the serial run
//! sets every concurrency knob (`map_concurrency`, `concurrency`,
//! `per_host_concurrency`) to 1. The downstream Kafka/Elasticsearch/PostgreSQL tasks are
//! left out: they are not what concurrency changes. The fixture counts requests in
//! flight per site, which shows the per-host cap was honoured.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::{json, Value};
use sluice_core::loader::load_file;
use sluice_core::Dag;
use sluice_fixtures::{serve_news_sites, Clock, NewsConfig, NewsFixture};
use sluice_store::NewRun;
use sluice_tasks::Registry;

use crate::config::Config;

#[derive(Args, Debug)]
pub struct CrawlBenchArgs {
    /// The DAG file whose `crawl` task is measured.
    #[arg(long, default_value = "dags/news_crawl.toml")]
    pub dag: PathBuf,
    /// News sites (7 categories each), each served on its own port.
    #[arg(long, default_value_t = 30)]
    pub sites: usize,
    /// Server latency before every page.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// Skip the serial run (it takes minutes at the defaults).
    #[arg(long)]
    pub no_serial: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One crawl's figures.
struct CrawlRun {
    mode: &'static str,
    wall_s: f64,
    articles: u64,
    requests: u64,
    /// The most requests one site saw at once, over all sites.
    max_in_flight_per_site: u64,
    /// The most requests all sites saw at once.
    max_in_flight: u64,
    per_host_cap: u64,
}

impl CrawlRun {
    fn json(&self) -> Value {
        json!({
            "mode": self.mode, "wall_s": self.wall_s, "articles": self.articles,
            "requests": self.requests, "max_in_flight_per_site": self.max_in_flight_per_site,
            "max_in_flight": self.max_in_flight, "per_host_cap": self.per_host_cap,
        })
    }
}

pub async fn run(cfg: &Config, args: CrawlBenchArgs) -> anyhow::Result<ExitCode> {
    let registry = Registry::builtin();
    let dag = load_file(&args.dag, &registry).map_err(|errors| {
        anyhow!(
            "{} does not load: {}",
            args.dag.display(),
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let crawl = dag
        .task("crawl")
        .ok_or_else(|| anyhow!("{} has no task `crawl`", args.dag.display()))?;
    if crawl.kind != "crawl" {
        bail!(
            "task `crawl` of {} is of kind {}",
            args.dag.display(),
            crawl.kind
        );
    }
    // A fixed fixture time: both runs see the same articles.
    let clock_at: DateTime<Utc> = "2026-11-22T01:00:00Z".parse()?;
    if !args.json {
        println!(
            "news_crawl benchmark: {} sites × 7 categories, {:?} per page, each site on its own port",
            args.sites, args.delay
        );
    }
    let mut runs = vec![measure(cfg, &args, &dag, clock_at, false).await?];
    if !args.json {
        print_run(&runs[0]);
    }
    if !args.no_serial {
        let serial = measure(cfg, &args, &dag, clock_at, true).await?;
        if !args.json {
            print_run(&serial);
        }
        if serial.articles != runs[0].articles {
            bail!(
                "the serial crawl found {} articles, the concurrent one {}: they must crawl the same pages",
                serial.articles,
                runs[0].articles
            );
        }
        runs.push(serial);
    }
    let speedup = runs.get(1).map(|s| s.wall_s / runs[0].wall_s);
    let caps_honoured = runs
        .iter()
        .all(|r| r.max_in_flight_per_site <= r.per_host_cap);
    if args.json {
        println!(
            "{}",
            json!({
                "sites": args.sites, "delay_ms": args.delay.as_millis() as u64,
                "runs": runs.iter().map(CrawlRun::json).collect::<Vec<_>>(),
                "speedup": speedup, "per_host_caps_honoured": caps_honoured,
            })
        );
    } else {
        if let Some(s) = speedup {
            println!("speed-up: {s:.1}× (serial wall time / concurrent wall time)");
        }
        println!(
            "per-host caps {}",
            if caps_honoured {
                "honoured: no site ever saw more requests at once than per_host_concurrency"
            } else {
                "VIOLATED"
            }
        );
    }
    if !caps_honoured {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_run(r: &CrawlRun) {
    println!(
        "{:<10} {:>8.2} s  {:>5} articles  {:>5} requests  at most {} in flight per site (cap {}), {} overall",
        r.mode,
        r.wall_s,
        r.articles,
        r.requests,
        r.max_in_flight_per_site,
        r.per_host_cap,
        r.max_in_flight
    );
}

/// The DAG reduced to its crawl task, over `site_urls`, serial or as shipped.
fn crawl_dag(dag: &Dag, site_urls: &[String], serial: bool) -> anyhow::Result<(Dag, u64)> {
    let mut d = dag.clone();
    d.dag_id = format!("{}_bench", dag.dag_id);
    d.tasks.retain(|id, _| id == "crawl");
    d.downstream = [("crawl".to_string(), Vec::new())].into_iter().collect();
    let task = d.tasks.get_mut("crawl").expect("checked above");
    task.upstream.clear();
    // The shipped DAG maps over site numbers of one base URL; here each site is a URL.
    task.map_over = Some(Value::Array(
        site_urls.iter().cloned().map(Value::String).collect(),
    ));
    task.args
        .insert("start_urls".into(), Value::String("{{ item }}".into()));
    if serial {
        task.map_concurrency = Some(1);
        task.args.insert("concurrency".into(), json!(1));
        task.args.insert("per_host_concurrency".into(), json!(1));
    }
    let cap = task
        .args
        .get("per_host_concurrency")
        .and_then(Value::as_u64)
        .unwrap_or(2);
    Ok((d, cap))
}

async fn measure(
    cfg: &Config,
    args: &CrawlBenchArgs,
    dag: &Dag,
    clock_at: DateTime<Utc>,
    serial: bool,
) -> anyhow::Result<CrawlRun> {
    let news = NewsFixture::new(NewsConfig {
        sites: args.sites,
        delay: args.delay,
        clock: Clock::fixed(clock_at),
        ..Default::default()
    });
    let sites = serve_news_sites(&news, "127.0.0.1", None)
        .await
        .context("cannot start the news fixture")?;
    let (bench_dag, cap) = crawl_dag(dag, &sites.urls, serial)?;
    let (_home, mut run_cfg, store) =
        crate::local_run::scratch_home(cfg, "sluice-bench-crawl-").await?;
    // Every mapped instance may run at once; the DAG's map_concurrency is the limit.
    run_cfg.parallelism = run_cfg.parallelism.max(args.sites);
    let registry = Registry::builtin();
    let logical = clock_at;
    let started = Instant::now();
    let run = crate::local_run::run_to_completion(
        &store,
        &registry,
        crate::executor_config(&run_cfg)?,
        &bench_dag,
        NewRun::manual(&bench_dag.dag_id, logical, None, json!({})),
    )
    .await?;
    let wall_s = started.elapsed().as_secs_f64();
    let final_run = store
        .run_by_pk(run.id)
        .await?
        .ok_or_else(|| anyhow!("the benchmark run disappeared"))?;
    let tis = store.task_instances(run.id).await?;
    if final_run.state != "success" {
        let errors: Vec<String> = tis
            .iter()
            .filter_map(|t| {
                t.error
                    .as_ref()
                    .map(|e| format!("crawl[{}]: {e}", t.map_index))
            })
            .take(3)
            .collect();
        bail!("the crawl run {}: {}", final_run.state, errors.join("; "));
    }
    // Articles each mapped crawl emitted (its last try's records out).
    let mut articles = 0u64;
    for t in &tis {
        if let Some(last) = store.tries(t.id).await?.last() {
            articles += last.records_out.unwrap_or(0).max(0) as u64;
        }
    }
    let stats = &news.stats;
    let max_in_flight_per_site = (0..args.sites)
        .map(|i| stats.site_max_in_flight(i))
        .max()
        .unwrap_or(0);
    let result = CrawlRun {
        mode: if serial { "serial" } else { "concurrent" },
        wall_s,
        articles,
        requests: stats.requests(),
        max_in_flight_per_site,
        max_in_flight: stats.max_in_flight(),
        per_host_cap: cap,
    };
    store.close().await;
    drop(sites);
    Ok(result)
}
