//! `/api/v2/variables`: the values templates read as `{{ var.value.NAME }}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_store::VariableRow;
use utoipa::{IntoParams, ToSchema};

use crate::dags::UpdateMaskQuery;
use crate::error::{ApiError, ApiResult, HTTPExceptionResponse, HTTPValidationError};
use crate::extract::{self, JsonBody, Query};
use crate::models;
use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct VariableResponse {
    pub key: String,
    pub value: Option<String>,
    pub description: Option<String>,
    /// Sluice keeps variables in the metadata store as they are: always false.
    pub is_encrypted: bool,
    pub team_name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VariableCollectionResponse {
    pub variables: Vec<VariableResponse>,
    pub total_entries: i64,
}

/// Airflow's `VariableBody`.
#[derive(Deserialize, ToSchema)]
pub struct VariableBody {
    pub key: String,
    /// A string is stored as is; any other JSON value as its JSON text.
    #[schema(value_type = Object)]
    pub value: Value,
    pub description: Option<String>,
}

/// A variable as the API and the UI show it. As Airflow redacts them, the value of a
/// variable whose key says it is secret (`db_password`, `api_token`, …) is masked.
pub(crate) fn response(v: VariableRow) -> VariableResponse {
    let value = if crate::connections::sensitive(&v.key) {
        crate::connections::MASK.to_string()
    } else {
        v.value
    };
    VariableResponse {
        key: v.key,
        value: Some(value),
        description: v.description,
        is_encrypted: false,
        team_name: None,
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn find(state: &AppState, key: &str) -> ApiResult<VariableRow> {
    state
        .store
        .variables()
        .await?
        .into_iter()
        .find(|v| v.key == key)
        .ok_or_else(|| ApiError::not_found(format!("The Variable with key: `{key}` was not found")))
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct VariablesQuery {
    #[param(value_type = Option<i64>, minimum = 0)]
    limit: Option<String>,
    #[param(value_type = Option<i64>, minimum = 0)]
    offset: Option<String>,
    /// `key` (default) or `-key`.
    #[serde(default)]
    order_by: Vec<String>,
    variable_key_pattern: Option<String>,
}

/// List variables.
#[utoipa::path(
    get,
    path = "/api/v2/variables",
    tag = "Variable",
    params(VariablesQuery),
    responses(
        (status = 200, description = "Variables", body = VariableCollectionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn get_variables(
    State(state): State<AppState>,
    Query(q): Query<VariablesQuery>,
) -> ApiResult<Json<VariableCollectionResponse>> {
    let (limit, offset) = extract::page(&q.limit, &q.offset)?;
    let order = extract::order_by(
        &q.order_by,
        |f| matches!(f, "key" | "id").then_some(()),
        "key",
    )?;
    let mut rows: Vec<VariableRow> = state
        .store
        .variables()
        .await?
        .into_iter()
        .filter(|v| extract::pattern_matches(&q.variable_key_pattern, &v.key))
        .collect();
    if order.first().is_some_and(|(_, desc)| *desc) {
        rows.reverse();
    }
    let total = rows.len() as i64;
    Ok(Json(VariableCollectionResponse {
        variables: models::paginate(rows, limit, offset)
            .into_iter()
            .map(response)
            .collect(),
        total_entries: total,
    }))
}

/// Create a variable.
#[utoipa::path(
    post,
    path = "/api/v2/variables",
    tag = "Variable",
    request_body = VariableBody,
    responses(
        (status = 201, description = "Created", body = VariableResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 409, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn post_variable(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<VariableBody>,
) -> ApiResult<(StatusCode, Json<VariableResponse>)> {
    if body.key.trim().is_empty() {
        return Err(ApiError::invalid(
            &["body", "key"],
            "key: must not be empty",
        ));
    }
    if find(&state, &body.key).await.is_ok() {
        return Err(ApiError::conflict(format!(
            "The Variable with key: `{}` already exists",
            body.key
        )));
    }
    state
        .store
        .set_variable(
            &body.key,
            &value_text(&body.value),
            body.description.as_deref(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(response(find(&state, &body.key).await?)),
    ))
}

/// Get a variable.
#[utoipa::path(
    get,
    path = "/api/v2/variables/{variable_key}",
    tag = "Variable",
    params(("variable_key" = String, Path)),
    responses(
        (status = 200, description = "The variable", body = VariableResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn get_variable(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Json<VariableResponse>> {
    Ok(Json(response(find(&state, &key).await?)))
}

/// Update a variable.
#[utoipa::path(
    patch,
    path = "/api/v2/variables/{variable_key}",
    tag = "Variable",
    params(("variable_key" = String, Path), UpdateMaskQuery),
    request_body = VariableBody,
    responses(
        (status = 200, description = "The variable, updated", body = VariableResponse),
        (status = 400, body = HTTPExceptionResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn patch_variable(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(mask): Query<UpdateMaskQuery>,
    JsonBody(body): JsonBody<VariableBody>,
) -> ApiResult<Json<VariableResponse>> {
    if body.key != key {
        return Err(ApiError::bad_request(format!(
            "Invalid body, key from request body doesn't match uri parameter ({} != {key})",
            body.key
        )));
    }
    let old = find(&state, &key).await?;
    let mask: Vec<String> = mask
        .update_mask
        .iter()
        .flat_map(|m| m.split(','))
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    if let Some(bad) = mask
        .iter()
        .find(|m| !["value", "description"].contains(&m.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid field `{bad}` in update mask"
        )));
    }
    let wants = |f: &str| mask.is_empty() || mask.iter().any(|m| m == f);
    // A masked value sent back (a GET's body, edited and PATCHed) keeps the stored one,
    // as for connection passwords.
    let sent = value_text(&body.value);
    let value = if wants("value")
        && !(sent == crate::connections::MASK && crate::connections::sensitive(&key))
    {
        sent
    } else {
        old.value
    };
    let description = if wants("description") {
        body.description
    } else {
        old.description
    };
    state
        .store
        .set_variable(&key, &value, description.as_deref())
        .await?;
    Ok(Json(response(find(&state, &key).await?)))
}

/// Delete a variable.
#[utoipa::path(
    delete,
    path = "/api/v2/variables/{variable_key}",
    tag = "Variable",
    params(("variable_key" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn delete_variable(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    if !state.store.delete_variable(&key).await? {
        return Err(ApiError::not_found(format!(
            "The Variable with key: `{key}` was not found"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}
