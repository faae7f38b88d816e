//! The `sluice` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use sluice_core::loader::load_file;
use sluice_core::{Dag, DataInterval};
use sluice_store::{now, NewRun, RunType, Store};
use sluice_tasks::Registry;

use crate::config::Config;
use crate::dagbag::DagProcessor;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "A fast workflow scheduler for data pipelines: DAGs of tasks in TOML, on a schedule, every run recorded.",
    long_about = "Sluice runs DAGs of tasks on schedules and records every run and try.\n\n\
        Quick start:\n  sluice dags validate            # check every DAG file in ./dags\n  \
        sluice standalone               # scheduler + executor on SQLite in ~/.sluice\n  \
        sluice dags unpause example_etl # let a DAG run on its schedule\n  \
        sluice dags trigger example_etl --conf '{\"rows\": 5}'\n  \
        sluice dags test example_etl    # run one DAG run in-process, print each task\n\n\
        Configuration comes from sluice.toml (./sluice.toml, $SLUICE_HOME/sluice.toml or --config) \
        and SLUICE_* environment variables: SLUICE_HOME, SLUICE_DATABASE_URL \
        (sqlite://PATH or postgres://USER@HOST/DB), SLUICE_DAGS_FOLDER, SLUICE_PARALLELISM, \
        SLUICE_SCHEDULER__<KEY>."
)]
pub struct Cli {
    /// Configuration file (default: ./sluice.toml, then $SLUICE_HOME/sluice.toml).
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Scheduler, executor and REST API in one process (SQLite by default): the zero-setup way to run Sluice.
    /// On first start it creates the user admin with a random password and prints it once.
    Standalone(crate::web::WebArgs),
    /// Run the scheduler with its local executor (SQLite or PostgreSQL; several may share one PostgreSQL).
    /// With --no-executor it only schedules, and `sluice worker` processes run the tasks.
    Scheduler(SchedulerArgs),
    /// Run an executor only: claim task instances from the shared store and run them (no
    /// scheduling). Start as many as you like against one PostgreSQL database.
    Worker(MetricsArgs),
    /// Database commands.
    #[command(subcommand)]
    Db(DbCommand),
    /// Inspect, validate, trigger and test DAGs.
    #[command(subcommand)]
    Dags(DagsCommand),
    /// Run single tasks.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Connections kept encrypted in the store (besides SLUICE_CONN_* and sluice.toml).
    #[command(subcommand)]
    Connections(crate::cli_credentials::ConnectionsCommand),
    /// Secrets kept encrypted in the store ({{ secrets.NAME }}), and key generation.
    #[command(subcommand)]
    Secrets(crate::cli_credentials::SecretsCommand),
    /// Variables templates read as {{ var.value.NAME }} / {{ var.json.NAME }}.
    #[command(subcommand)]
    Variables(VariablesCommand),
    /// Pools: named slot limits shared by tasks that set `pool`.
    #[command(subcommand)]
    Pools(PoolsCommand),
    /// Measure the scheduler's throughput and task-to-task latency with noop DAGs.
    Bench(crate::bench::BenchArgs),
    /// Local fixture servers (Steam API, news sites, post stream) and sample data files.
    #[command(subcommand)]
    Fixtures(crate::cli_fixtures::FixturesCommand),
    /// Serve the REST API (Airflow 3 compatible, /api/v2) without scheduling anything.
    Web(crate::web::WebArgs),
    /// Users of the REST API.
    #[command(subcommand)]
    Users(crate::web::UsersCommand),
}

#[derive(Args, Debug, Clone, Default)]
pub struct SchedulerArgs {
    /// Schedule only; leave running tasks to `sluice worker` processes
    /// (also `scheduler_executor = false` in sluice.toml, SLUICE_SCHEDULER_EXECUTOR=false).
    #[arg(long)]
    pub no_executor: bool,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

#[derive(Args, Debug, Clone, Default)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (default: SLUICE_METRICS_PORT;
    /// none when unset; 0 picks a free port).
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// Address of the metrics endpoint (default: SLUICE_METRICS_HOST, else the API's host).
    #[arg(long)]
    pub metrics_host: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Create or upgrade the metadata database schema.
    Migrate,
}

#[derive(Subcommand, Debug)]
pub enum DagsCommand {
    /// List DAGs found in the DAG folder, with their state in the store.
    List {
        #[arg(long)]
        json: bool,
    },
    /// The import errors the scheduler recorded: files that failed to load (their DAGs
    /// keep running on the last good version).
    ListImportErrors {
        #[arg(long)]
        json: bool,
    },
    /// Validate DAG files (default: the whole DAG folder). Prints PATH:LINE:COL: message
    /// for every problem; exits non-zero if there is any.
    Validate { paths: Vec<PathBuf> },
    /// Show a DAG: schedule, tasks and their dependencies, next run, latest runs.
    Show {
        dag_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Create a manual run now (a running scheduler executes it).
    Trigger {
        dag_id: String,
        /// Run configuration: a JSON object, read by templates as dag_run.conf and overriding params.
        #[arg(long)]
        conf: Option<String>,
        /// Run id (default: manual__<logical date>).
        #[arg(long)]
        run_id: Option<String>,
        /// Logical date (default: now).
        #[arg(long)]
        logical_date: Option<String>,
    },
    /// Pause a DAG: no new runs are created or started.
    Pause { dag_id: String },
    /// Unpause a DAG: it runs on its schedule again.
    Unpause { dag_id: String },
    /// List a DAG's runs, newest first.
    Runs {
        dag_id: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 25)]
        limit: i64,
    },
    /// Queue runs for every schedule interval starting between two dates (a running scheduler executes them).
    Backfill {
        dag_id: String,
        /// First logical date (RFC 3339, or YYYY-MM-DD in the DAG's timezone).
        #[arg(long)]
        from: String,
        /// Last logical date, inclusive.
        #[arg(long)]
        to: String,
        #[arg(long)]
        conf: Option<String>,
        /// Only print the runs that would be created.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run one whole DAG run in-process on a throwaway store and print each task instance's state.
    /// Exits 0 only if the run succeeded.
    Test(DagTestArgs),
    /// The next data intervals the DAG's schedule produces (what `airflow dags next-execution` answers).
    Next {
        dag_id: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Start looking from this date (default: now).
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct DagTestArgs {
    pub dag_id: String,
    /// Logical date (RFC 3339, or YYYY-MM-DD in the DAG's timezone; default: now).
    #[arg(long)]
    pub date: Option<String>,
    /// Run configuration (a JSON object).
    #[arg(long)]
    pub conf: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TasksCommand {
    /// Run one task in-process, ignoring dependencies and recording nothing; print its log and result.
    Test {
        dag_id: String,
        task_id: String,
        #[arg(long)]
        date: Option<String>,
        #[arg(long)]
        conf: Option<String>,
    },
    /// The task instances of one run: state, tries, duration, and the records and bytes
    /// each one's last try read and wrote (Airflow's `tasks states-for-dag-run`).
    States {
        dag_id: String,
        run_id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum VariablesCommand {
    List,
    Get {
        key: String,
    },
    Set {
        key: String,
        value: String,
        #[arg(long)]
        description: Option<String>,
    },
    Delete {
        key: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PoolsCommand {
    List,
    Set {
        name: String,
        slots: i64,
        #[arg(long)]
        description: Option<String>,
    },
}

/// Parses a date given on the command line: RFC 3339, `YYYY-MM-DDTHH:MM[:SS]` or
/// `YYYY-MM-DD` (both in `tz`).
pub fn parse_date(s: &str, tz: chrono_tz::Tz) -> anyhow::Result<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0).expect("midnight exists")
    } else {
        [
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%d %H:%M",
        ]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .ok_or_else(|| {
            anyhow!(
                "cannot read date {s:?}: use RFC 3339 (2024-08-01T09:00:00+09:00) or YYYY-MM-DD"
            )
        })?
    };
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| anyhow!("{s} does not exist in {} (a DST gap)", tz.name()))
}

/// Parses `--conf`: it must be a JSON object.
pub fn parse_conf(conf: Option<&str>) -> anyhow::Result<Value> {
    let Some(text) = conf else {
        return Ok(json!({}));
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| anyhow!("--conf is not valid JSON: {e}"))?;
    if !value.is_object() {
        bail!("--conf must be a JSON object like '{{\"key\": 1}}', got {value}");
    }
    Ok(value)
}

pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// A JSON value shown without quotes when it is a string.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(rfc3339).unwrap_or_else(|| "-".into())
}

/// Prints rows as aligned columns.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for r in rows {
        line(r.clone());
    }
}

/// `sluice scheduler` and `sluice worker`: the loops asked for, and a metrics endpoint
/// when a port is configured.
async fn run_process(
    cfg: &Config,
    registry: Registry,
    scheduler: bool,
    executor: bool,
    args: &MetricsArgs,
) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(cfg).await?;
    let what = match (scheduler, executor) {
        (true, true) => "scheduler and executor",
        (true, false) => "scheduler (no executor: tasks run on `sluice worker` processes)",
        _ => "worker",
    };
    println!(
        "Sluice {} {what} — store {}, DAGs from {}, parallelism {}",
        env!("CARGO_PKG_VERSION"),
        store.url(),
        cfg.dags_folder.display(),
        if executor { cfg.parallelism } else { 0 }
    );
    let shutdown = crate::shutdown_on_signals();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let port = args.metrics_port.or(cfg.metrics_port);
    let server = match port {
        None => None,
        Some(port) => {
            let host = args
                .metrics_host
                .clone()
                .or_else(|| cfg.metrics_host.clone())
                .unwrap_or_else(|| cfg.web_host.clone());
            let listener = tokio::net::TcpListener::bind((host.as_str(), port))
                .await
                .with_context(|| {
                    format!("cannot listen on {host}:{port} for metrics (use --metrics-port or SLUICE_METRICS_PORT)")
                })?;
            println!("Metrics at http://{}/metrics", listener.local_addr()?);
            // Workers leave the store gauges to the scheduler and the API: every
            // exporter of them reports the same numbers.
            let store = scheduler.then(|| store.clone());
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
                store,
                shutdown.clone(),
            )))
        }
    };
    let roles = crate::Roles {
        scheduler,
        executor,
        metrics,
        ..crate::Roles::default()
    };
    let result = crate::run_roles(cfg, store, registry, shutdown.clone(), roles).await;
    shutdown.cancel();
    if let Some(server) = server {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("the metrics endpoint stopped with an error: {e}"),
            Err(e) => tracing::error!("the metrics endpoint failed: {e}"),
        }
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = Arc::new(Config::load(cli.config.as_deref())?);
    let registry = Registry::builtin();
    match cli.command {
        Command::Standalone(web) => crate::web::standalone(&cfg, registry, &web).await,
        Command::Web(web) => crate::web::serve_api(&cfg, &web).await,
        Command::Users(cmd) => crate::web::users(&cfg, cmd).await,
        Command::Scheduler(args) => {
            let executor = cfg.scheduler_executor && !args.no_executor;
            run_process(&cfg, registry, true, executor, &args.metrics).await
        }
        Command::Worker(metrics) => run_process(&cfg, registry, false, true, &metrics).await,
        Command::Db(DbCommand::Migrate) => {
            let store = crate::open_store(&cfg).await?;
            println!("Database {} is up to date.", store.url());
            Ok(ExitCode::SUCCESS)
        }
        Command::Dags(cmd) => dags(&cfg, &registry, cmd).await,
        Command::Tasks(TasksCommand::States {
            dag_id,
            run_id,
            json,
        }) => task_states(&cfg, &dag_id, &run_id, json).await,
        Command::Tasks(TasksCommand::Test {
            dag_id,
            task_id,
            date,
            conf,
        }) => {
            tasks_test(
                &cfg,
                &registry,
                &dag_id,
                &task_id,
                date.as_deref(),
                conf.as_deref(),
            )
            .await
        }
        Command::Connections(cmd) => crate::cli_credentials::connections(&cfg, cmd).await,
        Command::Secrets(cmd) => crate::cli_credentials::secrets(&cfg, cmd).await,
        Command::Variables(cmd) => {
            let store = crate::open_store(&cfg).await?;
            match cmd {
                VariablesCommand::List => {
                    let rows: Vec<Vec<String>> = store
                        .variables()
                        .await?
                        .into_iter()
                        .map(|v| vec![v.key, v.value, v.description.unwrap_or_default()])
                        .collect();
                    table(&["key", "value", "description"], &rows);
                }
                VariablesCommand::Get { key } => {
                    match store.variables().await?.into_iter().find(|v| v.key == key) {
                        Some(v) => println!("{}", v.value),
                        None => bail!("variable {key} is not set"),
                    }
                }
                VariablesCommand::Set {
                    key,
                    value,
                    description,
                } => {
                    store
                        .set_variable(&key, &value, description.as_deref())
                        .await?;
                    println!("Variable {key} set.");
                }
                VariablesCommand::Delete { key } => {
                    if !store.delete_variable(&key).await? {
                        bail!("variable {key} is not set");
                    }
                    println!("Variable {key} deleted.");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pools(cmd) => {
            let store = crate::open_store(&cfg).await?;
            match cmd {
                PoolsCommand::List => {
                    let rows: Vec<Vec<String>> = store
                        .pools()
                        .await?
                        .into_iter()
                        .map(|p| {
                            vec![
                                p.name,
                                p.slots.to_string(),
                                p.description.unwrap_or_default(),
                            ]
                        })
                        .collect();
                    table(&["pool", "slots", "description"], &rows);
                }
                PoolsCommand::Set {
                    name,
                    slots,
                    description,
                } => {
                    store.set_pool(&name, slots, description.as_deref()).await?;
                    println!("Pool {name} has {slots} slots.");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => crate::bench::run(&cfg, args).await,
        Command::Fixtures(cmd) => crate::cli_fixtures::run(cmd).await,
    }
}

/// Finds a DAG in the folder; bad files are reported.
pub(crate) fn find_dag(cfg: &Config, registry: &Registry, dag_id: &str) -> anyhow::Result<Dag> {
    let load = DagProcessor::new(cfg.dags_folder.clone(), registry.clone()).load();
    if let Some(dag) = load.dags.into_iter().find(|d| d.dag_id == dag_id) {
        return Ok(dag);
    }
    let mut msg = format!("DAG {dag_id} is not in {}", cfg.dags_folder.display());
    if !load.errors.is_empty() {
        msg.push_str("; these files have errors:");
        for d in load.errors.values().flatten() {
            msg.push_str(&format!("\n  {d}"));
        }
    }
    Err(anyhow!(msg))
}

/// The DAG's current version in the store, recording it from the folder first if the
/// store has never seen it (e.g. no scheduler has run yet).
async fn ensure_recorded(
    store: &Store,
    cfg: &Config,
    registry: &Registry,
    dag_id: &str,
) -> anyhow::Result<Arc<Dag>> {
    if let Some((_, dag)) = store.latest_dag(dag_id).await? {
        return Ok(dag);
    }
    let dag = find_dag(cfg, registry, dag_id)?;
    let id = store.sync_dag(&dag, cfg.dags_paused_at_creation).await?;
    Ok(store.dag_version(id).await?)
}

fn interval_json(dag: &Dag, iv: &DataInterval) -> Value {
    json!({
        "start": rfc3339(iv.start),
        "end": rfc3339(iv.end),
        "start_local": iv.start.with_timezone(&dag.timezone).to_rfc3339(),
        "end_local": iv.end.with_timezone(&dag.timezone).to_rfc3339(),
    })
}

async fn dags(cfg: &Config, registry: &Registry, cmd: DagsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DagsCommand::Validate { paths } => Ok(validate(cfg, registry, &paths)),
        DagsCommand::ListImportErrors { json } => {
            let store = crate::open_store(cfg).await?;
            let rows = store.import_errors().await?;
            if json {
                let out: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        json!({
                            "filename": r.fileloc,
                            "timestamp": rfc3339(r.updated_at),
                            "errors": serde_json::from_str::<Value>(&r.errors).unwrap_or(Value::Null),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if rows.is_empty() {
                println!("No import errors.");
            } else {
                for r in &rows {
                    let diags: Vec<sluice_core::Diagnostic> =
                        serde_json::from_str(&r.errors).unwrap_or_default();
                    for d in diags {
                        println!("{d}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DagsCommand::Next {
            dag_id,
            count,
            after,
            json,
        } => {
            let dag = find_dag(cfg, registry, &dag_id)?;
            let after = match after {
                Some(a) => parse_date(&a, dag.timezone)?,
                None => now(),
            };
            let intervals = dag.intervals_after(after, count);
            if json {
                let out = json!({
                    "dag_id": dag.dag_id,
                    "timezone": dag.timezone.name(),
                    "intervals": intervals.iter().map(|iv| interval_json(&dag, iv)).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if intervals.is_empty() {
                println!(
                    "DAG {dag_id} has no more scheduled intervals after {}.",
                    rfc3339(after)
                );
            } else {
                let rows: Vec<Vec<String>> = intervals
                    .iter()
                    .map(|iv| {
                        vec![
                            rfc3339(iv.start),
                            rfc3339(iv.end),
                            iv.start.with_timezone(&dag.timezone).to_rfc3339(),
                            iv.end.with_timezone(&dag.timezone).to_rfc3339(),
                        ]
                    })
                    .collect();
                let tz_start = format!("start, local ({})", dag.timezone.name());
                let tz_end = format!("end, local ({})", dag.timezone.name());
                table(&["start (UTC)", "end (UTC)", &tz_start, &tz_end], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        DagsCommand::Test(args) => crate::local_run::dags_test(cfg, registry, args).await,
        DagsCommand::List { json } => {
            let load = DagProcessor::new(cfg.dags_folder.clone(), registry.clone()).load();
            let store = crate::open_store(cfg).await?;
            let rows = store.dags().await?;
            let paused = |id: &str| rows.iter().find(|r| r.dag_id == id).map(|r| r.is_paused);
            if json {
                let out: Vec<Value> = load
                    .dags
                    .iter()
                    .map(|d| {
                        json!({
                            "dag_id": d.dag_id,
                            "fileloc": d.fileloc,
                            "schedule": sluice_store::schedule_label(&d.schedule),
                            "timezone": d.timezone.name(),
                            "tags": d.tags,
                            "is_paused": paused(&d.dag_id).unwrap_or(d.is_paused_upon_creation.unwrap_or(cfg.dags_paused_at_creation)),
                            "tasks": d.tasks.len(),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"dags": out, "import_errors": load.errors})
                    )?
                );
            } else {
                let table_rows: Vec<Vec<String>> = load
                    .dags
                    .iter()
                    .map(|d| {
                        vec![
                            d.dag_id.clone(),
                            sluice_store::schedule_label(&d.schedule),
                            match paused(&d.dag_id) {
                                Some(true) => "paused".into(),
                                Some(false) => "active".into(),
                                None => "new".into(),
                            },
                            d.tasks.len().to_string(),
                            d.tags.join(","),
                            d.fileloc.clone(),
                        ]
                    })
                    .collect();
                table(
                    &["dag_id", "schedule", "state", "tasks", "tags", "file"],
                    &table_rows,
                );
                if !load.errors.is_empty() {
                    eprintln!("\n{} file(s) failed to load:", load.errors.len());
                    for d in load.errors.values().flatten() {
                        eprintln!("  {d}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DagsCommand::Show { dag_id, json } => {
            let dag = find_dag(cfg, registry, &dag_id)?;
            let store = crate::open_store(cfg).await?;
            let row = store.dag(&dag_id).await?;
            let runs = store.runs(&dag_id, 5).await?;
            let last = store.last_scheduled_interval(&dag_id).await?;
            let next = dag.next_due_at(last.as_ref(), now());
            let connections =
                sluice_tasks::Connections::load(&cfg.connections).map_err(anyhow::Error::msg)?;
            let checkpoints = crate::checkpoints::Checkpoints::new(store.clone(), &connections);
            let current = if dag.checkpoints.is_empty() {
                Ok(Default::default())
            } else {
                checkpoints.current(&dag).await
            };
            if json {
                let out = json!({
                    "dag": dag,
                    "is_paused": row.as_ref().map(|r| r.is_paused),
                    "next_run_after": next.map(rfc3339),
                    "latest_runs": runs,
                    "checkpoints": match &current {
                        Ok(values) => json!(values),
                        Err(e) => json!({"error": e}),
                    },
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("DAG:         {}", dag.dag_id);
            if let Some(d) = &dag.description {
                println!("description: {d}");
            }
            println!("file:        {}", dag.fileloc);
            println!(
                "schedule:    {} ({})",
                sluice_store::schedule_label(&dag.schedule),
                dag.timezone.name()
            );
            println!(
                "start/end:   {} / {}",
                opt_time(dag.start_date),
                opt_time(dag.end_date)
            );
            println!(
                "catchup:     {}, max_active_runs {}, max_active_tasks {}",
                dag.catchup, dag.max_active_runs, dag.max_active_tasks
            );
            println!(
                "state:       {}",
                match &row {
                    Some(r) if r.is_paused => "paused",
                    Some(_) => "active",
                    None => "not yet seen by a scheduler",
                }
            );
            println!(
                "next run:    {}",
                next.map(|t| format!("after {}", rfc3339(t)))
                    .unwrap_or_else(|| "none".into())
            );
            if !dag.tags.is_empty() {
                println!("tags:        {}", dag.tags.join(", "));
            }
            if !dag.checkpoints.is_empty() {
                println!();
                println!("checkpoints (in {}):", checkpoints.describe(&dag.dag_id));
                match &current {
                    Ok(values) => {
                        let rows: Vec<Vec<String>> = values
                            .iter()
                            .map(|(name, v)| {
                                let initial = &dag.checkpoints[name];
                                vec![
                                    name.clone(),
                                    plain(v),
                                    if v == initial {
                                        "initial value".into()
                                    } else {
                                        format!("initial {}", plain(initial))
                                    },
                                ]
                            })
                            .collect();
                        table(&["checkpoint", "current", ""], &rows);
                    }
                    Err(e) => println!("  cannot read them: {e}"),
                }
            }
            println!();
            let rows: Vec<Vec<String>> = dag
                .tasks
                .values()
                .map(|t| {
                    vec![
                        t.task_id.clone(),
                        t.kind.clone(),
                        if t.upstream.is_empty() {
                            "-".into()
                        } else {
                            t.upstream.join(",")
                        },
                        t.trigger_rule.as_str().to_string(),
                        t.retry.retries.to_string(),
                        t.pool.clone(),
                    ]
                })
                .collect();
            table(
                &[
                    "task",
                    "kind",
                    "upstream",
                    "trigger_rule",
                    "retries",
                    "pool",
                ],
                &rows,
            );
            if !runs.is_empty() {
                println!();
                let rows: Vec<Vec<String>> = runs
                    .iter()
                    .map(|r| {
                        vec![
                            r.run_id.clone(),
                            r.state.clone(),
                            r.run_type.clone(),
                            opt_time(r.start_date),
                            opt_time(r.end_date),
                        ]
                    })
                    .collect();
                table(&["latest runs", "state", "type", "started", "ended"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        DagsCommand::Trigger {
            dag_id,
            conf,
            run_id,
            logical_date,
        } => {
            let conf = parse_conf(conf.as_deref())?;
            let store = crate::open_store(cfg).await?;
            let dag = ensure_recorded(&store, cfg, registry, &dag_id).await?;
            let logical = match logical_date {
                Some(d) => parse_date(&d, dag.timezone)?,
                None => now(),
            };
            let new = NewRun {
                dag_id: dag_id.clone(),
                run_id: run_id.unwrap_or_else(|| RunType::Manual.run_id(logical)),
                run_type: RunType::Manual,
                logical_date: logical,
                data_interval_start: logical,
                data_interval_end: logical,
                conf,
            };
            match store.create_run(&new, "cli").await? {
                Some(run) => {
                    println!("Created run {} of DAG {} (queued).", run.run_id, run.dag_id);
                    // Schedulers on PostgreSQL start it now rather than at their next pass.
                    if let Err(e) = store.notify_work().await {
                        tracing::debug!("cannot notify schedulers: {e}");
                    }
                    if store.dag(&dag_id).await?.is_some_and(|d| d.is_paused) {
                        println!("Note: DAG {dag_id} is paused; the run starts when it is unpaused (sluice dags unpause {dag_id}).");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => bail!(
                    "DAG {dag_id} already has a run with id {} or logical date {}",
                    new.run_id,
                    rfc3339(logical)
                ),
            }
        }
        DagsCommand::Pause { dag_id } => set_paused(cfg, registry, &dag_id, true).await,
        DagsCommand::Unpause { dag_id } => set_paused(cfg, registry, &dag_id, false).await,
        DagsCommand::Runs {
            dag_id,
            json,
            limit,
        } => {
            let store = crate::open_store(cfg).await?;
            if store.dag(&dag_id).await?.is_none() {
                bail!("DAG {dag_id} has no record in {}", store.url());
            }
            let runs = store.runs(&dag_id, limit).await?;
            if json {
                let out: Vec<Value> = runs
                    .iter()
                    .map(|r| {
                        json!({
                            "dag_id": r.dag_id,
                            "run_id": r.run_id,
                            "state": r.state,
                            "run_type": r.run_type,
                            "logical_date": rfc3339(r.logical_date),
                            "data_interval_start": rfc3339(r.data_interval_start),
                            "data_interval_end": rfc3339(r.data_interval_end),
                            "queued_at": rfc3339(r.queued_at),
                            "start_date": r.start_date.map(rfc3339),
                            "end_date": r.end_date.map(rfc3339),
                            "conf": r.conf_json(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let rows: Vec<Vec<String>> = runs
                    .iter()
                    .map(|r| {
                        vec![
                            r.run_id.clone(),
                            r.state.clone(),
                            r.run_type.clone(),
                            rfc3339(r.logical_date),
                            opt_time(r.start_date),
                            opt_time(r.end_date),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "run_id",
                        "state",
                        "type",
                        "logical_date",
                        "started",
                        "ended",
                    ],
                    &rows,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DagsCommand::Backfill {
            dag_id,
            from,
            to,
            conf,
            dry_run,
        } => {
            let conf = parse_conf(conf.as_deref())?;
            let dag = find_dag(cfg, registry, &dag_id)?;
            let from = parse_date(&from, dag.timezone)?;
            let to = parse_date(&to, dag.timezone)?;
            if to < from {
                bail!(
                    "--to ({}) is before --from ({})",
                    rfc3339(to),
                    rfc3339(from)
                );
            }
            if !dag.schedule.is_scheduled() {
                bail!("DAG {dag_id} has no schedule, so it has no intervals to backfill; trigger it instead");
            }
            let intervals = dag.intervals_between(from, to);
            if intervals.is_empty() {
                bail!(
                    "DAG {dag_id} has no schedule interval starting between {} and {}",
                    rfc3339(from),
                    rfc3339(to)
                );
            }
            if dry_run {
                for iv in &intervals {
                    println!(
                        "{}  [{}, {})",
                        RunType::Backfill.run_id(iv.start),
                        rfc3339(iv.start),
                        rfc3339(iv.end)
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let store = crate::open_store(cfg).await?;
            ensure_recorded(&store, cfg, registry, &dag_id).await?;
            let (mut created, mut existing) = (0, 0);
            for iv in &intervals {
                let new = NewRun {
                    dag_id: dag_id.clone(),
                    run_id: RunType::Backfill.run_id(iv.start),
                    run_type: RunType::Backfill,
                    logical_date: iv.start,
                    data_interval_start: iv.start,
                    data_interval_end: iv.end,
                    conf: conf.clone(),
                };
                match store.create_run(&new, "cli").await? {
                    Some(run) => {
                        created += 1;
                        println!("queued {}", run.run_id);
                    }
                    None => {
                        existing += 1;
                        println!(
                            "exists {} (a run for this logical date is already recorded)",
                            rfc3339(iv.start)
                        );
                    }
                }
            }
            if created > 0 {
                if let Err(e) = store.notify_work().await {
                    tracing::debug!("cannot notify schedulers: {e}");
                }
            }
            println!(
                "Backfill of {dag_id}: {created} run(s) queued, {existing} already present. A running scheduler executes them, at most {} at a time.",
                dag.max_active_runs
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn set_paused(
    cfg: &Config,
    registry: &Registry,
    dag_id: &str,
    paused: bool,
) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(cfg).await?;
    ensure_recorded(&store, cfg, registry, dag_id).await?;
    if !store.set_paused(dag_id, paused, "cli").await? {
        bail!("DAG {dag_id} is not in the store");
    }
    println!(
        "DAG {dag_id} is {}.",
        if paused { "paused" } else { "unpaused" }
    );
    Ok(ExitCode::SUCCESS)
}

fn validate(cfg: &Config, registry: &Registry, paths: &[PathBuf]) -> ExitCode {
    let targets: Vec<PathBuf> = if paths.is_empty() {
        vec![cfg.dags_folder.clone()]
    } else {
        paths.to_vec()
    };
    let mut dags = 0;
    let mut problems = 0;
    let mut files_bad = 0;
    for target in &targets {
        let (ok, errors) = validate_path(target, registry);
        dags += ok;
        for diags in errors {
            files_bad += 1;
            for d in diags {
                problems += 1;
                eprintln!("{d}");
            }
        }
    }
    if problems > 0 {
        eprintln!("{problems} problem(s) in {files_bad} file(s); {dags} DAG(s) valid.");
        ExitCode::FAILURE
    } else {
        println!("{dags} DAG(s) valid.");
        ExitCode::SUCCESS
    }
}

fn validate_path(target: &Path, registry: &Registry) -> (usize, Vec<Vec<sluice_core::Diagnostic>>) {
    if target.is_dir() {
        let load = sluice_core::loader::load_folder(target, registry);
        (load.dags.len(), load.errors.into_values().collect())
    } else {
        match load_file(target, registry) {
            Ok(_) => (1, Vec::new()),
            Err(diags) => (0, vec![diags]),
        }
    }
}

async fn tasks_test(
    cfg: &Config,
    registry: &Registry,
    dag_id: &str,
    task_id: &str,
    date: Option<&str>,
    conf: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let conf = parse_conf(conf)?;
    let dag = find_dag(cfg, registry, dag_id)?;
    let task = dag
        .task(task_id)
        .ok_or_else(|| {
            anyhow!(
                "DAG {dag_id} has no task {task_id}; its tasks: {}",
                dag.tasks.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?
        .clone();
    let logical = match date {
        Some(d) => parse_date(d, dag.timezone)?,
        None => now(),
    };
    let store = crate::open_store(cfg)
        .await
        .context("tasks test reads variables from the store")?;
    let out = crate::local_run::run_single_task(&store, registry, cfg, &dag, &task, logical, &conf)
        .await?;
    Ok(out)
}

async fn task_states(
    cfg: &Config,
    dag_id: &str,
    run_id: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(cfg).await?;
    let run = store
        .run(dag_id, run_id)
        .await?
        .ok_or_else(|| anyhow!("DAG {dag_id} has no run {run_id} in {}", store.url()))?;
    let mut rows = Vec::new();
    for ti in store.task_instances(run.id).await? {
        let last = store.tries(ti.id).await?.pop();
        rows.push((ti, last));
    }
    if json {
        let out: Vec<Value> = rows
            .iter()
            .map(|(ti, t)| {
                json!({
                    "task_id": ti.task_id,
                    "map_index": ti.map_index,
                    "state": ti.state_label(),
                    "try_number": ti.try_number,
                    "duration_ms": ti.duration_ms,
                    "start_date": ti.start_date.map(rfc3339),
                    "end_date": ti.end_date.map(rfc3339),
                    "records_in": t.as_ref().and_then(|t| t.records_in),
                    "records_out": t.as_ref().and_then(|t| t.records_out),
                    "bytes_in": t.as_ref().and_then(|t| t.bytes_in),
                    "bytes_out": t.as_ref().and_then(|t| t.bytes_out),
                    "error": ti.error,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"dag_id": dag_id, "run_id": run_id, "state": run.state, "task_instances": out})
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(ti, t)| {
            vec![
                if ti.map_index >= 0 {
                    format!("{}[{}]", ti.task_id, ti.map_index)
                } else {
                    ti.task_id.clone()
                },
                ti.state_label().to_string(),
                ti.try_number.to_string(),
                num(ti.duration_ms),
                num(t.as_ref().and_then(|t| t.records_in)),
                num(t.as_ref().and_then(|t| t.records_out)),
                num(t.as_ref().and_then(|t| t.bytes_in)),
                num(t.as_ref().and_then(|t| t.bytes_out)),
                ti.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    println!("Run {run_id} of {dag_id}: {}", run.state);
    table(
        &[
            "task",
            "state",
            "try",
            "ms",
            "records in",
            "records out",
            "bytes in",
            "bytes out",
            "error",
        ],
        &table_rows,
    );
    Ok(ExitCode::SUCCESS)
}
