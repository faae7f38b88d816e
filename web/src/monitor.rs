//! Health and version.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct BaseInfoResponse {
    pub status: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SchedulerInfoResponse {
    pub status: Option<String>,
    pub latest_scheduler_heartbeat: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TriggererInfoResponse {
    pub status: Option<String>,
    pub latest_triggerer_heartbeat: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DagProcessorInfoResponse {
    pub status: Option<String>,
    pub latest_dag_processor_heartbeat: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct HealthInfoResponse {
    pub metadatabase: BaseInfoResponse,
    pub scheduler: SchedulerInfoResponse,
    /// Sluice has no triggerer: always null.
    pub triggerer: TriggererInfoResponse,
    pub dag_processor: Option<DagProcessorInfoResponse>,
}

/// A scheduler whose executor heartbeat is older than this is unhealthy.
const HEARTBEAT_THRESHOLD_S: i64 = 60;

/// Health of the metadata database and the scheduler (no authentication).
#[utoipa::path(
    get,
    path = "/api/v2/monitor/health",
    tag = "Monitor",
    responses((status = 200, description = "Health of each component", body = HealthInfoResponse)),
    security(())
)]
pub async fn get_health(State(state): State<AppState>) -> Json<HealthInfoResponse> {
    let db_ok = state.store.ping().await.is_ok();
    let heartbeat = if db_ok {
        state
            .store
            .latest_heartbeat("executor")
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let sched_ok =
        heartbeat.is_some_and(|t| (chrono::Utc::now() - t).num_seconds() < HEARTBEAT_THRESHOLD_S);
    let status = |ok: bool| Some(if ok { "healthy" } else { "unhealthy" }.to_string());
    let hb = heartbeat.map(|t| t.to_rfc3339());
    Json(HealthInfoResponse {
        metadatabase: BaseInfoResponse {
            status: status(db_ok),
        },
        scheduler: SchedulerInfoResponse {
            status: status(sched_ok),
            latest_scheduler_heartbeat: hb.clone(),
        },
        triggerer: TriggererInfoResponse {
            status: None,
            latest_triggerer_heartbeat: None,
        },
        // The scheduler parses DAG files itself.
        dag_processor: Some(DagProcessorInfoResponse {
            status: status(sched_ok),
            latest_dag_processor_heartbeat: hb,
        }),
    })
}

#[derive(Serialize, ToSchema)]
pub struct VersionInfo {
    /// Sluice's version.
    pub version: String,
    pub git_version: Option<String>,
}

/// The server's version (no authentication, as in Airflow).
#[utoipa::path(
    get,
    path = "/api/v2/version",
    tag = "Version",
    responses((status = 200, description = "Version", body = VersionInfo)),
    security(())
)]
pub async fn get_version(State(_state): State<AppState>) -> ApiResult<Json<VersionInfo>> {
    Ok(Json(VersionInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        git_version: None,
    }))
}
