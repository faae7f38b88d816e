//! How fast the web UI's pages answer with a long history: fills a store with
//! 100,000 task instances (a 40-task DAG with 2,500 finished runs, plus small DAGs),
//! serves the UI on 127.0.0.1:0 and times the DAG list, the grid (default 25 runs and
//! 100 runs), the graph, a run page and a live-block render over HTTP with a session.
//!
//!     cargo run --release -p sluice-web --example ui_bench -- \
//!         --database sqlite --database postgres://postgres@127.0.0.1:5432/postgres
//!
//! Target (issue 3): the DAG list and the grid answer in under 200 ms.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use chrono::{TimeZone, Utc};
use clap::Parser;
use sluice_store::scratch::ScratchDatabase;
use sluice_store::{NewRun, Store};
use sluice_web::{AppState, WebConfig};

#[derive(Parser)]
struct Args {
    /// `sqlite` (a temporary file) or a PostgreSQL URL on which a scratch database is
    /// created and dropped. Repeat to measure several.
    #[arg(long = "database", default_value = "sqlite")]
    databases: Vec<String>,
    /// Runs of the big DAG.
    #[arg(long, default_value_t = 2500)]
    runs: usize,
    /// Tasks of the big DAG (runs × tasks task instances).
    #[arg(long, default_value_t = 40)]
    tasks: usize,
    /// Requests per page.
    #[arg(long, default_value_t = 30)]
    samples: usize,
}

fn big_dag(tasks: usize, runs: usize) -> String {
    let mut s = format!(
        "[dag]\nid = \"history\"\nschedule = \"None\"\nmax_active_runs = {}\n",
        runs + 1
    );
    for i in 0..tasks {
        s.push_str(&format!("[tasks.step_{i:02}]\nkind = \"noop\"\n"));
        if i > 0 {
            // A few parallel branches, so the graph has more than a chain to lay out.
            s.push_str(&format!("upstream = [\"step_{:02}\"]\n", (i - 1) / 2 * 2));
        }
    }
    s
}

async fn fill(store: &Store, url: &str, args: &Args) -> anyhow::Result<usize> {
    let registry = sluice_tasks::Registry::builtin();
    let mut sources = vec![big_dag(args.tasks, args.runs)];
    for i in 0..9 {
        sources.push(format!(
            "[dag]\nid = \"small_{i}\"\nschedule = \"@daily\"\nstart_date = 2026-01-01T00:00:00Z\n[tasks.a]\nkind = \"noop\"\n[tasks.b]\nkind = \"noop\"\nupstream = [\"a\"]\n"
        ));
    }
    for src in &sources {
        let mut dag = sluice_core::loader::parse_dag(
            src,
            std::path::Path::new("/dags/bench.toml"),
            &registry,
        )
        .map_err(|d| anyhow!("bad DAG: {d:?}"))?;
        dag.fileloc = format!("/dags/{}.toml", dag.dag_id);
        store.sync_dag(&dag, false).await?;
    }
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    for i in 0..args.runs {
        let at = t0 + chrono::Duration::minutes(i as i64);
        store
            .create_run(
                &NewRun::manual("history", at, None, serde_json::json!({})),
                "bench",
            )
            .await?;
    }
    for i in 0..9 {
        for d in 0..30 {
            let at = t0 + chrono::Duration::days(d);
            store
                .create_run(
                    &NewRun::manual(&format!("small_{i}"), at, None, serde_json::json!({})),
                    "bench",
                )
                .await?;
        }
    }
    let mut started = 0;
    for id in std::iter::once("history".to_string()).chain((0..9).map(|i| format!("small_{i}"))) {
        started += store.start_queued_runs(&id).await?;
    }
    let _ = started;
    // Finish everything as the executor would have: successful tries of a second each.
    let finish = "UPDATE task_instance SET state = 'success', try_number = 1, start_date = logical_date, \
                  end_date = logical_date, duration_ms = 1000; \
                  UPDATE dag_run SET state = 'success', start_date = logical_date, end_date = logical_date;";
    if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(url).await?;
        sqlx::raw_sql(finish).execute(&pool).await?;
        sqlx::raw_sql("ANALYZE").execute(&pool).await?;
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await?;
        sqlx::raw_sql(finish).execute(&pool).await?;
        sqlx::raw_sql("ANALYZE").execute(&pool).await?;
        pool.close().await;
    }
    let (_, total) = store
        .list_task_instances(&sluice_store::TiFilter {
            limit: 1,
            ..Default::default()
        })
        .await?;
    Ok(total as usize)
}

struct Timing {
    median_ms: f64,
    p95_ms: f64,
    max_ms: f64,
    bytes: usize,
}

fn summarize(mut ms: Vec<f64>, bytes: usize) -> Timing {
    ms.sort_by(f64::total_cmp);
    Timing {
        median_ms: ms[ms.len() / 2],
        p95_ms: ms[((ms.len() as f64 * 0.95) as usize).min(ms.len() - 1)],
        max_ms: *ms.last().unwrap(),
        bytes,
    }
}

async fn time_page(
    client: &reqwest::Client,
    base: &str,
    cookie: &str,
    path: &str,
    samples: usize,
) -> anyhow::Result<Timing> {
    let mut ms = Vec::with_capacity(samples);
    let mut bytes = 0;
    // One warm-up request (caches of DAG versions, prepared statements).
    for i in 0..=samples {
        let t = Instant::now();
        let r = client
            .get(format!("{base}{path}"))
            .header("Cookie", cookie)
            .send()
            .await?;
        let status = r.status();
        let body = r.bytes().await?;
        if !status.is_success() {
            return Err(anyhow!(
                "GET {path}: {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        if i > 0 {
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        bytes = body.len();
    }
    Ok(summarize(ms, bytes))
}

/// Time to the first `live` event of a page's stream (one render of its live block).
async fn time_live(
    client: &reqwest::Client,
    base: &str,
    cookie: &str,
    path: &str,
    samples: usize,
) -> anyhow::Result<Timing> {
    let mut ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..samples {
        let t = Instant::now();
        let mut r = client
            .get(format!("{base}{path}"))
            .header("Cookie", cookie)
            .send()
            .await?;
        let mut buf = Vec::new();
        while !String::from_utf8_lossy(&buf).contains("\n\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
                .await
                .context("no live event within 10 s")??
                .ok_or_else(|| anyhow!("stream ended"))?;
            buf.extend_from_slice(&chunk);
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = buf.len();
    }
    Ok(summarize(ms, bytes))
}

async fn bench(db: &str, args: &Args) -> anyhow::Result<()> {
    let (url, scratch, _dir) = if db == "sqlite" {
        let dir = tempfile::tempdir()?;
        (
            format!("sqlite://{}", dir.path().join("ui.db").display()),
            None,
            Some(dir),
        )
    } else {
        let s = ScratchDatabase::create(db, "sluice_bench_").await?;
        (s.url.clone(), Some(s), None)
    };
    let outcome = async {
        let store = Store::connect(&url).await?;
        store.migrate().await?;
        let t = Instant::now();
        let n = fill(&store, &url, args).await?;
        eprintln!(
            "{}: {n} task instances written in {:.1} s",
            label(db),
            t.elapsed().as_secs_f64()
        );
        sluice_web::create_user(&store, "bench", "bench-password", "viewer").await?;
        let home = tempfile::tempdir()?;
        let state = AppState::new(store.clone(), WebConfig::new(home.path())).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(sluice_web::serve(listener, state, async move {
            s.cancelled().await
        }));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let r = client
            .post(format!("{base}/login"))
            .form(&[("username", "bench"), ("password", "bench-password")])
            .send()
            .await?;
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .ok_or_else(|| anyhow!("login gave no session"))?
            .to_string();
        let last_run = store.runs("history", 1).await?.remove(0).run_id;
        let run_path = format!(
            "/dags/history/runs/{}",
            url::form_urlencoded::byte_serialize(last_run.as_bytes()).collect::<String>()
        );
        let pages = [
            ("DAG list", "/dags".to_string()),
            ("grid, 25 runs", "/dags/history".to_string()),
            ("grid, 100 runs", "/dags/history?runs=100".to_string()),
            ("graph", "/dags/history/graph".to_string()),
            ("run + Gantt", run_path),
        ];
        println!(
            "{:<10} {:<22} {:>10} {:>10} {:>10} {:>9}",
            "database", "page", "median ms", "p95 ms", "max ms", "KiB"
        );
        for (name, path) in &pages {
            let t = time_page(&client, &base, &cookie, path, args.samples).await?;
            print_row(db, name, &t);
        }
        let t = time_live(
            &client,
            &base,
            &cookie,
            "/ui/events?view=grid&dag_id=history",
            args.samples.min(10),
        )
        .await?;
        print_row(db, "live grid (SSE)", &t);
        stop.cancel();
        store.close().await;
        anyhow::Ok(())
    }
    .await;
    if let Some(s) = scratch {
        s.drop_database().await?;
    }
    outcome
}

fn print_row(db: &str, page: &str, t: &Timing) {
    println!(
        "{:<10} {:<22} {:>10.1} {:>10.1} {:>10.1} {:>9.1}",
        label(db),
        page,
        t.median_ms,
        t.p95_ms,
        t.max_ms,
        t.bytes as f64 / 1024.0
    );
}

fn label(db: &str) -> &'static str {
    if db == "sqlite" {
        "sqlite"
    } else {
        "postgres"
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for db in &args.databases {
        bench(db, &args).await?;
    }
    Ok(())
}
