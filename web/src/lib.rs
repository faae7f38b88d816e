//! Sluice's REST API: Apache Airflow 3's public `/api/v2` (paths, parameters and JSON
//! shapes), served from the metadata store, so Airflow's clients and scripts work
//! against Sluice. See docs/api.md.
//!
//! One module per resource; each handler carries its OpenAPI description
//! (`#[utoipa::path]`) and is registered through `utoipa_axum::routes!`, so the router
//! and `/api/v2/openapi.json` are built from the same list and cannot drift apart.
//!
//! Every route but `/api/v2/monitor/health`, `/api/v2/version` and `/auth/token` needs a
//! bearer token or basic credentials; only admins may change anything ([`auth`]).

pub mod auth;
mod backfills;
mod connections;
mod dag_runs;
mod dags;
pub mod error;
pub mod extract;
mod import_errors;
mod models;
mod monitor;
mod pools;
mod task_instances;
mod ui;
mod variables;
mod xcom;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use sluice_store::{RunState, Store};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{create_user, generate_password, User, ADMIN, ROLES, VIEWER};

/// What the API needs besides the store.
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// `$SLUICE_HOME/logs`: try logs, at `sluice_store::log_path(…)` below it.
    pub logs_dir: PathBuf,
    /// `$SLUICE_HOME/artifacts`: XCom values too large to keep in the database.
    pub artifacts_dir: PathBuf,
    /// Signs tokens. None: a secret generated once and kept in the store, so every
    /// process of the installation accepts the others' tokens.
    pub jwt_secret: Option<String>,
    /// How long a token is valid.
    pub token_ttl: Duration,
    /// Encrypts and decrypts connections (and reads secrets) kept in the store; from
    /// `fernet_key` / `SLUICE_FERNET_KEY`. None: connections cannot be created or changed.
    pub vault: Option<Arc<sluice_tasks::Vault>>,
    /// Connections from `SLUICE_CONN_*` and sluice.toml: listed read-only.
    pub connections: sluice_tasks::Connections,
    /// Secrets from `SLUICE_SECRET_*` and sluice.toml: only their values are used, to
    /// mask them in XCom values.
    pub secrets: sluice_tasks::Secrets,
}

impl WebConfig {
    pub fn new(home: &std::path::Path) -> WebConfig {
        WebConfig {
            logs_dir: home.join("logs"),
            artifacts_dir: home.join("artifacts"),
            jwt_secret: None,
            token_ttl: Duration::from_secs(24 * 3600),
            vault: None,
            connections: Default::default(),
            secrets: Default::default(),
        }
    }
}

/// Shared by every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub cfg: Arc<WebConfig>,
    keys: Arc<auth::Keys>,
    verified: Arc<auth::VerifiedCache>,
    live_renders: Arc<ui::SharedRenders>,
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
    run_finished: Option<Arc<RunFinishedHook>>,
}

/// Told of each run the API finished (marked success or failed), with its DAG id.
type RunFinishedHook = dyn Fn(&str, RunState) + Send + Sync;

impl AppState {
    /// Resolves the token secret (configured, else the store's) and builds the state.
    pub async fn new(store: Store, cfg: WebConfig) -> anyhow::Result<AppState> {
        let secret = match cfg.jwt_secret.clone().filter(|s| !s.trim().is_empty()) {
            Some(s) => s,
            None => store.shared_secret("jwt", auth::generate_secret).await?,
        };
        Ok(AppState {
            keys: Arc::new(auth::Keys::new(&secret, cfg.token_ttl)),
            verified: Arc::new(auth::VerifiedCache::new()),
            live_renders: Arc::default(),
            store,
            cfg: Arc::new(cfg),
            wake: None,
            run_finished: None,
        })
    }

    /// Called after the API created or re-queued work (a trigger, a clear), so an
    /// in-process scheduler and executor react at once instead of at their next tick.
    pub fn on_new_work(mut self, wake: impl Fn() + Send + Sync + 'static) -> AppState {
        self.wake = Some(Arc::new(wake));
        self
    }

    /// Called when the API marks a run success or failed, so the process's metrics
    /// count it like a run the scheduler finished.
    pub fn on_run_finished(
        mut self,
        hook: impl Fn(&str, RunState) + Send + Sync + 'static,
    ) -> AppState {
        self.run_finished = Some(Arc::new(hook));
        self
    }

    pub(crate) fn run_finished(&self, dag_id: &str, state: RunState) {
        if let Some(hook) = &self.run_finished {
            hook(dag_id, state);
        }
    }

    pub(crate) fn wake(&self) {
        if let Some(w) = &self.wake {
            w();
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice API",
        description = "Apache Airflow 3 compatible REST API (`/api/v2`) of the Sluice workflow scheduler. \
            Authenticate with `POST /auth/token` and send `Authorization: Bearer <token>`, or use HTTP basic auth.",
        version = "2"
    ),
    modifiers(&SecurityAddon),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])),
    components(schemas(error::HTTPExceptionResponse, error::HTTPValidationError, error::ValidationError))
)]
struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "HTTPBearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "HTTPBasic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}

/// Every route with its OpenAPI description.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::create_token))
        .routes(routes!(monitor::get_health))
        .routes(routes!(monitor::get_version))
        .routes(routes!(dags::get_dags))
        .routes(routes!(dags::get_dag, dags::patch_dag))
        .routes(routes!(dags::get_dag_details))
        .routes(routes!(dag_runs::get_dag_runs, dag_runs::trigger_dag_run))
        .routes(routes!(
            dag_runs::get_dag_run,
            dag_runs::patch_dag_run,
            dag_runs::delete_dag_run
        ))
        .routes(routes!(dag_runs::clear_dag_run))
        .routes(routes!(task_instances::get_task_instances))
        .routes(routes!(
            task_instances::get_task_instance,
            task_instances::patch_task_instance
        ))
        .routes(routes!(
            task_instances::get_mapped_task_instance,
            task_instances::patch_task_instance_by_map_index
        ))
        .routes(routes!(task_instances::patch_task_instance_dry_run))
        .routes(routes!(task_instances::get_task_instance_tries))
        .routes(routes!(task_instances::get_task_instance_try_details))
        .routes(routes!(task_instances::get_log))
        .routes(routes!(task_instances::post_clear_task_instances))
        .routes(routes!(xcom::get_xcom_entries))
        .routes(routes!(xcom::get_xcom_entry))
        .routes(routes!(variables::get_variables, variables::post_variable))
        .routes(routes!(
            variables::get_variable,
            variables::patch_variable,
            variables::delete_variable
        ))
        .routes(routes!(
            connections::get_connections,
            connections::post_connection
        ))
        .routes(routes!(
            connections::get_connection,
            connections::patch_connection,
            connections::delete_connection
        ))
        .routes(routes!(pools::get_pools, pools::post_pool))
        .routes(routes!(
            pools::get_pool,
            pools::patch_pool,
            pools::delete_pool
        ))
        .routes(routes!(import_errors::get_import_errors))
        .routes(routes!(import_errors::get_import_error))
        .routes(routes!(backfills::create_backfill))
}

/// The OpenAPI document of the API, as served at `/api/v2/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().split_for_parts().1
}

/// The API as an axum router (every route, authentication included).
pub fn router(state: AppState) -> Router {
    let (routes, spec) = api().split_for_parts();
    let spec = Arc::new(spec);
    routes
        .route(
            "/api/v2/openapi.json",
            axum::routing::get(move || {
                let spec = spec.clone();
                async move { axum::Json(spec.as_ref().clone()) }
            }),
        )
        .merge(ui::router(state.clone()))
        .fallback(|| async { error::ApiError::not_found("Not Found: no such API path") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
