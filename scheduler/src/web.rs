//! The REST API in the `sluice` binary: `sluice web` (the API alone), `sluice
//! standalone` (scheduler, executor and API in one process) and `sluice users`.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use sluice_store::Store;
use sluice_tasks::Registry;
use sluice_web::{AppState, WebConfig};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

#[derive(Args, Debug, Clone, Default)]
pub struct WebArgs {
    /// Port of the REST API (default: SLUICE_WEB_PORT, else 8080; 0 picks a free port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Address to listen on (default: SLUICE_WEB_HOST, else 127.0.0.1).
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Create a user of the REST API. Only an argon2 hash of the password is stored.
    Create {
        #[arg(long)]
        username: String,
        /// At least 8 characters.
        #[arg(long)]
        password: String,
        /// admin (may change anything) or viewer (may only read).
        #[arg(long, default_value = "viewer", value_parser = ["admin", "viewer"])]
        role: String,
    },
    /// List the users and their roles.
    List,
}

/// The API's state on `store`, with this installation's token secret.
pub async fn api_state(cfg: &Config, store: Store) -> anyhow::Result<AppState> {
    let mut web = WebConfig::new(&cfg.home);
    web.logs_dir = cfg.logs_dir();
    web.artifacts_dir = cfg.artifacts_dir();
    web.jwt_secret = cfg.jwt_secret.clone();
    web.vault = crate::credentials::vault(cfg.fernet_key.as_deref())
        .map_err(anyhow::Error::msg)?
        .map(std::sync::Arc::new);
    web.connections =
        sluice_tasks::Connections::load(&cfg.connections).map_err(anyhow::Error::msg)?;
    web.secrets = sluice_tasks::Secrets::load(&cfg.secrets);
    AppState::new(store, web).await
}

/// Binds the API's address; fails clearly when the port is taken.
pub async fn bind(cfg: &Config, args: &WebArgs) -> anyhow::Result<tokio::net::TcpListener> {
    let host = args.host.clone().unwrap_or_else(|| cfg.web_host.clone());
    let port = args.port.unwrap_or(cfg.web_port);
    tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port} (use --port or SLUICE_WEB_PORT)"))
}

fn announce(listener: &tokio::net::TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        println!("web UI on http://{addr}/ (log in with a user of `sluice users`)");
        println!(
            "REST API listening on http://{addr}/api/v2 (token: POST http://{addr}/auth/token)"
        );
    }
}

/// The API and `GET /metrics` (without authentication, see `crate::metrics::router`)
/// on one listener until `shutdown` completes.
async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let store = state.store.clone();
    let app = sluice_web::router(state).merge(crate::metrics::router(metrics, Some(store)));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Creates the user `admin` with a random password when the store has no user yet,
/// and prints the password (only its hash is kept).
async fn ensure_admin(store: &Store) -> anyhow::Result<()> {
    if store.user_count().await? > 0 {
        return Ok(());
    }
    let password = sluice_web::generate_password();
    if sluice_web::create_user(store, "admin", &password, sluice_web::ADMIN).await? {
        println!("Login with username admin and password {password}");
        println!("(printed only this once; create more users with `sluice users create`)");
    }
    Ok(())
}

/// `sluice web`: the API alone, until SIGTERM or Ctrl-C.
pub async fn serve_api(cfg: &Config, args: &WebArgs) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(cfg).await?;
    // Runs triggered and tasks cleared through the API: schedulers and workers in
    // other processes hear of them at once (PostgreSQL), not at their next poll.
    let notifier = store.clone();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let counted = metrics.clone();
    let state = api_state(cfg, store.clone())
        .await?
        .on_new_work(move || crate::notify_work_soon(&notifier))
        .on_run_finished(move |dag_id, run_state| counted.run_finished(dag_id, run_state));
    let listener = bind(cfg, args).await?;
    if store.user_count().await? == 0 {
        println!("No users yet: create one with `sluice users create --username NAME --password PASS --role admin`.");
    }
    announce(&listener);
    let shutdown = crate::shutdown_on_signals();
    serve(listener, state, metrics, async move {
        shutdown.cancelled().await
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// `sluice standalone`: scheduler, executor and API in one process. Triggers and
/// clears through the API wake the scheduler and the executor at once.
pub async fn standalone(
    cfg: &Config,
    registry: Registry,
    args: &WebArgs,
) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(cfg).await?;
    println!(
        "Sluice {} — store {}, DAGs from {}, parallelism {}",
        env!("CARGO_PKG_VERSION"),
        store.url(),
        cfg.dags_folder.display(),
        cfg.parallelism
    );
    let listener = bind(cfg, args).await?;
    ensure_admin(&store).await?;
    let wakers = crate::Wakers::default();
    let (sw, ew) = (wakers.scheduler.clone(), wakers.executor.clone());
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let counted = metrics.clone();
    let state = api_state(cfg, store.clone())
        .await?
        .on_new_work(move || {
            sw.notify_one();
            ew.notify_one();
        })
        .on_run_finished(move |dag_id, run_state| counted.run_finished(dag_id, run_state));
    announce(&listener);
    let shutdown = crate::shutdown_on_signals();
    let api_stop = CancellationToken::new();
    let stop = api_stop.clone();
    let api = tokio::spawn(serve(listener, state, metrics.clone(), async move {
        stop.cancelled().await
    }));
    let roles = crate::Roles {
        wakers,
        metrics,
        ..crate::Roles::default()
    };
    let result = crate::run_roles(cfg, store, registry, shutdown, roles).await;
    api_stop.cancel();
    match api.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("the REST API stopped with an error: {e}"),
        Err(e) => tracing::error!("the REST API task failed: {e}"),
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `sluice users …`.
pub async fn users(cfg: &Config, cmd: UsersCommand) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(cfg).await?;
    match cmd {
        UsersCommand::Create {
            username,
            password,
            role,
        } => {
            if !sluice_web::create_user(&store, &username, &password, &role).await? {
                bail!("user {username} exists already");
            }
            println!("User {username} created with role {role}.");
        }
        UsersCommand::List => {
            for u in store.users().await? {
                println!("{}\t{}\t{}", u.username, u.role, u.created_at.to_rfc3339());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
