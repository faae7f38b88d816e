//! `/api/v2/pools`: named slot limits shared by the tasks that use them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sluice_store::PoolRow;
use utoipa::{IntoParams, ToSchema};

use crate::dags::UpdateMaskQuery;
use crate::error::{ApiError, ApiResult, HTTPExceptionResponse, HTTPValidationError};
use crate::extract::{self, JsonBody, Query};
use crate::models;
use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct PoolResponse {
    pub name: String,
    pub slots: i64,
    pub description: Option<String>,
    pub include_deferred: bool,
    pub occupied_slots: i64,
    pub running_slots: i64,
    pub queued_slots: i64,
    pub scheduled_slots: i64,
    pub open_slots: i64,
    pub deferred_slots: i64,
    pub team_name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PoolCollectionResponse {
    pub pools: Vec<PoolResponse>,
    pub total_entries: i64,
}

/// Airflow's `PoolBody`.
#[derive(Deserialize, ToSchema)]
pub struct PoolBody {
    pub name: String,
    pub slots: i64,
    pub description: Option<String>,
    /// Sluice has no deferred tasks: accepted and ignored.
    #[allow(dead_code)]
    pub include_deferred: Option<bool>,
}

/// Airflow's `PoolPatchBody`.
#[derive(Deserialize, ToSchema)]
pub struct PoolPatchBody {
    /// The pool's name (renaming is not supported).
    pub pool: Option<String>,
    pub slots: Option<i64>,
    pub description: Option<String>,
    #[allow(dead_code)]
    pub include_deferred: Option<bool>,
}

pub(crate) async fn responses(
    state: &AppState,
    rows: Vec<PoolRow>,
) -> ApiResult<Vec<PoolResponse>> {
    let usage = state.store.pool_usage().await?;
    Ok(rows
        .into_iter()
        .map(|p| {
            let (queued, running, scheduled) = usage.get(&p.name).copied().unwrap_or_default();
            let occupied = queued + running;
            PoolResponse {
                open_slots: p.slots - occupied,
                name: p.name,
                slots: p.slots,
                description: p.description,
                include_deferred: false,
                occupied_slots: occupied,
                running_slots: running,
                queued_slots: queued,
                scheduled_slots: scheduled,
                deferred_slots: 0,
                team_name: None,
            }
        })
        .collect())
}

async fn find(state: &AppState, name: &str) -> ApiResult<PoolRow> {
    state
        .store
        .pools()
        .await?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ApiError::not_found(format!("The Pool with name: `{name}` was not found")))
}

async fn one(state: &AppState, name: &str) -> ApiResult<PoolResponse> {
    let row = find(state, name).await?;
    Ok(responses(state, vec![row]).await?.remove(0))
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct PoolsQuery {
    #[param(value_type = Option<i64>, minimum = 0)]
    limit: Option<String>,
    #[param(value_type = Option<i64>, minimum = 0)]
    offset: Option<String>,
    /// `name` (default) or `-name`.
    #[serde(default)]
    order_by: Vec<String>,
    pool_name_pattern: Option<String>,
}

/// List pools.
#[utoipa::path(
    get,
    path = "/api/v2/pools",
    tag = "Pool",
    params(PoolsQuery),
    responses(
        (status = 200, description = "Pools", body = PoolCollectionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn get_pools(
    State(state): State<AppState>,
    Query(q): Query<PoolsQuery>,
) -> ApiResult<Json<PoolCollectionResponse>> {
    let (limit, offset) = extract::page(&q.limit, &q.offset)?;
    let order = extract::order_by(
        &q.order_by,
        |f| matches!(f, "name" | "pool" | "id").then_some(()),
        "name",
    )?;
    let mut rows: Vec<PoolRow> = state
        .store
        .pools()
        .await?
        .into_iter()
        .filter(|p| extract::pattern_matches(&q.pool_name_pattern, &p.name))
        .collect();
    if order.first().is_some_and(|(_, desc)| *desc) {
        rows.reverse();
    }
    let total = rows.len() as i64;
    Ok(Json(PoolCollectionResponse {
        pools: responses(&state, models::paginate(rows, limit, offset)).await?,
        total_entries: total,
    }))
}

fn check_slots(slots: i64) -> ApiResult<()> {
    if slots < 0 {
        return Err(ApiError::invalid(
            &["body", "slots"],
            format!("slots: Input should be greater than or equal to 0, got {slots}"),
        ));
    }
    Ok(())
}

/// Create a pool.
#[utoipa::path(
    post,
    path = "/api/v2/pools",
    tag = "Pool",
    request_body = PoolBody,
    responses(
        (status = 201, description = "Created", body = PoolResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 409, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn post_pool(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<PoolBody>,
) -> ApiResult<(StatusCode, Json<PoolResponse>)> {
    if body.name.trim().is_empty() {
        return Err(ApiError::invalid(
            &["body", "name"],
            "name: must not be empty",
        ));
    }
    check_slots(body.slots)?;
    if find(&state, &body.name).await.is_ok() {
        return Err(ApiError::conflict(format!(
            "The Pool with name: `{}` already exists",
            body.name
        )));
    }
    state
        .store
        .set_pool(&body.name, body.slots, body.description.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(one(&state, &body.name).await?)))
}

/// Get a pool.
#[utoipa::path(
    get,
    path = "/api/v2/pools/{pool_name}",
    tag = "Pool",
    params(("pool_name" = String, Path)),
    responses(
        (status = 200, description = "The pool", body = PoolResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn get_pool(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PoolResponse>> {
    Ok(Json(one(&state, &name).await?))
}

/// Update a pool's slots or description.
#[utoipa::path(
    patch,
    path = "/api/v2/pools/{pool_name}",
    tag = "Pool",
    params(("pool_name" = String, Path), UpdateMaskQuery),
    request_body = PoolPatchBody,
    responses(
        (status = 200, description = "The pool, updated", body = PoolResponse),
        (status = 400, body = HTTPExceptionResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn patch_pool(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(mask): Query<UpdateMaskQuery>,
    JsonBody(body): JsonBody<PoolPatchBody>,
) -> ApiResult<Json<PoolResponse>> {
    let old = find(&state, &name).await?;
    if body.pool.as_ref().is_some_and(|p| p != &name) {
        return Err(ApiError::bad_request("renaming a pool is not supported"));
    }
    let mask: Vec<String> = mask
        .update_mask
        .iter()
        .flat_map(|m| m.split(','))
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    if let Some(bad) = mask.iter().find(|m| {
        !["slots", "description", "include_deferred", "name", "pool"].contains(&m.as_str())
    }) {
        return Err(ApiError::bad_request(format!(
            "Invalid field `{bad}` in update mask"
        )));
    }
    let wants = |f: &str| mask.is_empty() || mask.iter().any(|m| m == f);
    let slots = match body.slots {
        Some(s) if wants("slots") => {
            check_slots(s)?;
            s
        }
        _ => old.slots,
    };
    let description = if wants("description") && body.description.is_some() {
        body.description
    } else {
        old.description
    };
    state
        .store
        .set_pool(&name, slots, description.as_deref())
        .await?;
    Ok(Json(one(&state, &name).await?))
}

/// Delete a pool (not `default_pool`).
#[utoipa::path(
    delete,
    path = "/api/v2/pools/{pool_name}",
    tag = "Pool",
    params(("pool_name" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, body = HTTPExceptionResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn delete_pool(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if name == "default_pool" {
        return Err(ApiError::bad_request("Default Pool can't be deleted"));
    }
    if !state.store.delete_pool(&name).await? {
        return Err(ApiError::not_found(format!(
            "The Pool with name: `{name}` was not found"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}
