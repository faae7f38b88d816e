//! `/api/v2/connections`: the named connections tasks use. Those defined by
//! `SLUICE_CONN_*` variables or `sluice.toml` are listed read-only; the API creates,
//! changes and deletes those kept in the metadata store, encrypted with the configured
//! Fernet key (`SLUICE_FERNET_KEY`). A password never leaves the API: responses show
//! `***` when one is set, as Airflow masks it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_tasks::{Connection, Masker, Vault};
use utoipa::{IntoParams, ToSchema};

use crate::dags::UpdateMaskQuery;
use crate::error::{ApiError, ApiResult, HTTPExceptionResponse, HTTPValidationError};
use crate::extract::{self, JsonBody, Query};
use crate::models;
use crate::AppState;

/// What responses show instead of a password (and of sensitive `extra` values).
pub const MASK: &str = "***";

/// `extra` keys whose values are hidden like the password (Airflow's sensitive fields).
const SENSITIVE: [&str; 9] = [
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "authorization",
];

pub(crate) fn sensitive(key: &str) -> bool {
    let k = key.to_lowercase();
    SENSITIVE.iter().any(|s| k.contains(s))
}

/// Airflow's `ConnectionResponse`.
#[derive(Serialize, ToSchema)]
pub struct ConnectionResponse {
    pub connection_id: String,
    pub conn_type: String,
    pub description: Option<String>,
    pub host: Option<String>,
    pub login: Option<String>,
    pub schema: Option<String>,
    pub port: Option<i64>,
    /// `***` when the connection has a password (never the password itself).
    pub password: Option<String>,
    /// The URI's query parameters as a JSON object in a string.
    pub extra: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionCollectionResponse {
    pub connections: Vec<ConnectionResponse>,
    pub total_entries: i64,
}

/// Airflow's `ConnectionBody`.
#[derive(Deserialize, ToSchema)]
pub struct ConnectionBody {
    pub connection_id: String,
    pub conn_type: String,
    pub description: Option<String>,
    pub host: Option<String>,
    pub login: Option<String>,
    pub schema: Option<String>,
    pub port: Option<i64>,
    /// `***` in a PATCH keeps the current password.
    pub password: Option<String>,
    /// A JSON object in a string; its entries become the URI's query parameters.
    pub extra: Option<String>,
}

/// A connection as the API sees it: parsed (when it could be decrypted) and where it
/// comes from.
pub(crate) struct Entry {
    id: String,
    conn_type: String,
    description: Option<String>,
    parsed: Option<Connection>,
    pub(crate) stored: bool,
}

pub(crate) fn response(e: &Entry) -> ConnectionResponse {
    let c = e.parsed.as_ref();
    let extra = c.filter(|c| !c.extra.is_empty()).map(|c| {
        let map: serde_json::Map<String, Value> = c
            .extra
            .iter()
            .map(|(k, v)| {
                let v = if sensitive(k) { MASK } else { v.as_str() };
                (k.clone(), Value::String(v.to_string()))
            })
            .collect();
        Value::Object(map).to_string()
    });
    ConnectionResponse {
        connection_id: e.id.clone(),
        conn_type: e.conn_type.clone(),
        description: e.description.clone(),
        host: c.and_then(|c| c.host.clone()),
        login: c.and_then(|c| c.login.clone()),
        schema: c.and_then(|c| c.schema.clone()),
        port: c.and_then(|c| c.port).map(i64::from),
        password: c
            .and_then(|c| c.password.as_ref())
            .map(|_| MASK.to_string()),
        extra,
    }
}

/// Every connection: the environment and sluice.toml first (they win), then the store.
pub(crate) async fn all(state: &AppState) -> ApiResult<BTreeMap<String, Entry>> {
    let base = &state.cfg.connections;
    let mut out = BTreeMap::new();
    for name in base.names() {
        if let Ok(c) = base.get(&name) {
            out.insert(
                name.clone(),
                Entry {
                    id: name.clone(),
                    conn_type: c.conn_type.clone(),
                    description: None,
                    parsed: Some(c.clone()),
                    stored: false,
                },
            );
        }
    }
    for s in state.store.stored_connections().await? {
        if out.contains_key(&s.conn_id) {
            continue;
        }
        let parsed = state
            .cfg
            .vault
            .as_ref()
            .and_then(|v| v.decrypt(&s.uri_encrypted).ok())
            .and_then(|uri| Connection::parse(&s.conn_id, &uri).ok());
        out.insert(
            s.conn_id.clone(),
            Entry {
                id: s.conn_id,
                conn_type: s.conn_type,
                description: s.description,
                parsed,
                stored: true,
            },
        );
    }
    Ok(out)
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "The Connection with connection_id: `{id}` was not found"
    ))
}

async fn find(state: &AppState, id: &str) -> ApiResult<Entry> {
    all(state)
        .await?
        .remove(&id.to_lowercase())
        .ok_or_else(|| not_found(id))
}

fn vault(state: &AppState) -> ApiResult<Arc<Vault>> {
    state.cfg.vault.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "storing connections needs an encryption key: set {} (or fernet_key in sluice.toml; generate one with `sluice secrets generate-key`) and restart",
                sluice_tasks::vault::KEY_VARIABLE
            ),
        )
    })
}

fn check_id(id: &str) -> ApiResult<String> {
    let ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        return Err(ApiError::invalid(
            &["body", "connection_id"],
            format!("connection_id `{id}` may hold only letters, digits, `_` and `-`"),
        ));
    }
    Ok(id.to_lowercase())
}

fn parse_extra(extra: &Option<String>) -> ApiResult<BTreeMap<String, String>> {
    let Some(text) = extra.as_deref().filter(|t| !t.trim().is_empty()) else {
        return Ok(BTreeMap::new());
    };
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("extra: not a JSON object ({e})")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request("extra: must be a JSON object"));
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// The fields a connection URI is built from.
struct Parts {
    conn_type: String,
    host: Option<String>,
    port: Option<i64>,
    login: Option<String>,
    password: Option<String>,
    schema: Option<String>,
    extra: BTreeMap<String, String>,
}

/// `conn_type://login:password@host:port/schema?extra`, percent-encoded.
fn build_uri(p: &Parts) -> ApiResult<String> {
    let bad = |what: &str| ApiError::bad_request(format!("cannot build a connection URI: {what}"));
    let ct = p.conn_type.trim();
    if ct.is_empty() {
        return Err(bad("conn_type is empty"));
    }
    let host = p.host.as_deref().filter(|h| !h.is_empty());
    let mut url = url::Url::parse(&format!("{ct}://{}", if host.is_some() { "h" } else { "" }))
        .map_err(|e| bad(&format!("conn_type `{ct}` is not a URI scheme ({e})")))?;
    if let Some(h) = host {
        url.set_host(Some(h))
            .map_err(|e| bad(&format!("host `{h}` ({e})")))?;
    }
    if let Some(port) = p.port {
        let port = u16::try_from(port).map_err(|_| bad(&format!("port {port} is out of range")))?;
        url.set_port(Some(port))
            .map_err(|_| bad("a port needs a host"))?;
    }
    if let Some(login) = p.login.as_deref().filter(|l| !l.is_empty()) {
        url.set_username(login)
            .map_err(|_| bad("a login needs a host"))?;
    }
    if let Some(pw) = p.password.as_deref().filter(|l| !l.is_empty()) {
        url.set_password(Some(pw))
            .map_err(|_| bad("a password needs a host"))?;
    }
    if let Some(schema) = p.schema.as_deref().filter(|s| !s.is_empty()) {
        url.set_path(&format!("/{schema}"));
    }
    if !p.extra.is_empty() {
        url.query_pairs_mut().extend_pairs(p.extra.iter());
    }
    Ok(url.to_string())
}

async fn save(
    state: &AppState,
    vault: &Vault,
    id: &str,
    description: Option<&str>,
    parts: &Parts,
) -> ApiResult<Entry> {
    let uri = build_uri(parts)?;
    let parsed = Connection::parse(id, &uri).map_err(ApiError::bad_request)?;
    state
        .store
        .put_connection(id, &parsed.conn_type, description, &vault.encrypt(&uri))
        .await?;
    Ok(Entry {
        id: id.to_string(),
        conn_type: parsed.conn_type.clone(),
        description: description.map(str::to_string),
        parsed: Some(parsed),
        stored: true,
    })
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct ConnectionsQuery {
    #[param(value_type = Option<i64>, minimum = 0)]
    limit: Option<String>,
    #[param(value_type = Option<i64>, minimum = 0)]
    offset: Option<String>,
    /// `connection_id` (default), `conn_type`, `host` or `id`; `-` for descending.
    #[serde(default)]
    order_by: Vec<String>,
    connection_id_pattern: Option<String>,
}

#[derive(Clone, Copy)]
enum Order {
    Id,
    Type,
    Host,
}

/// List connections (passwords masked).
#[utoipa::path(
    get,
    path = "/api/v2/connections",
    tag = "Connection",
    params(ConnectionsQuery),
    responses(
        (status = 200, description = "Connections", body = ConnectionCollectionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn get_connections(
    State(state): State<AppState>,
    Query(q): Query<ConnectionsQuery>,
) -> ApiResult<Json<ConnectionCollectionResponse>> {
    let (limit, offset) = extract::page(&q.limit, &q.offset)?;
    let order = extract::order_by(
        &q.order_by,
        |f| match f {
            "connection_id" | "conn_id" | "id" => Some(Order::Id),
            "conn_type" => Some(Order::Type),
            "host" => Some(Order::Host),
            _ => None,
        },
        "connection_id",
    )?;
    let mut rows: Vec<ConnectionResponse> = all(&state)
        .await?
        .values()
        .filter(|e| extract::pattern_matches(&q.connection_id_pattern, &e.id))
        .map(response)
        .collect();
    if let Some((field, desc)) = order.first().copied() {
        rows.sort_by(|a, b| {
            let o = match field {
                Order::Id => a.connection_id.cmp(&b.connection_id),
                Order::Type => a
                    .conn_type
                    .cmp(&b.conn_type)
                    .then(a.connection_id.cmp(&b.connection_id)),
                Order::Host => a
                    .host
                    .cmp(&b.host)
                    .then(a.connection_id.cmp(&b.connection_id)),
            };
            if desc {
                o.reverse()
            } else {
                o
            }
        });
    }
    let total = rows.len() as i64;
    Ok(Json(ConnectionCollectionResponse {
        connections: models::paginate(rows, limit, offset),
        total_entries: total,
    }))
}

/// Get a connection (password masked).
#[utoipa::path(
    get,
    path = "/api/v2/connections/{connection_id}",
    tag = "Connection",
    params(("connection_id" = String, Path)),
    responses(
        (status = 200, description = "The connection", body = ConnectionResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn get_connection(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ConnectionResponse>> {
    Ok(Json(response(&find(&state, &id).await?)))
}

/// Create a connection, stored encrypted.
#[utoipa::path(
    post,
    path = "/api/v2/connections",
    tag = "Connection",
    request_body = ConnectionBody,
    responses(
        (status = 201, description = "Created", body = ConnectionResponse),
        (status = 400, body = HTTPExceptionResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 409, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
        (status = 503, description = "No encryption key configured", body = HTTPExceptionResponse),
    )
)]
pub async fn post_connection(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ConnectionBody>,
) -> ApiResult<(StatusCode, Json<ConnectionResponse>)> {
    let id = check_id(&body.connection_id)?;
    let vault = vault(&state)?;
    if let Some(e) = all(&state).await?.get(&id) {
        let whence = if e.stored {
            ""
        } else {
            " (defined by the environment or sluice.toml)"
        };
        return Err(ApiError::conflict(format!(
            "The Connection with connection_id: `{id}` already exists{whence}"
        )));
    }
    let parts = Parts {
        conn_type: body.conn_type,
        host: body.host,
        port: body.port,
        login: body.login,
        password: body.password,
        schema: body.schema,
        extra: parse_extra(&body.extra)?,
    };
    let entry = save(&state, &vault, &id, body.description.as_deref(), &parts).await?;
    Ok((StatusCode::CREATED, Json(response(&entry))))
}

const FIELDS: [&str; 8] = [
    "conn_type",
    "description",
    "host",
    "login",
    "schema",
    "port",
    "password",
    "extra",
];

/// Update a stored connection. A password of `***` keeps the current one.
#[utoipa::path(
    patch,
    path = "/api/v2/connections/{connection_id}",
    tag = "Connection",
    params(("connection_id" = String, Path), UpdateMaskQuery),
    request_body = ConnectionBody,
    responses(
        (status = 200, description = "The connection, updated", body = ConnectionResponse),
        (status = 400, body = HTTPExceptionResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
        (status = 503, description = "No encryption key configured", body = HTTPExceptionResponse),
    )
)]
pub async fn patch_connection(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(mask): Query<UpdateMaskQuery>,
    JsonBody(body): JsonBody<ConnectionBody>,
) -> ApiResult<Json<ConnectionResponse>> {
    if !body.connection_id.eq_ignore_ascii_case(&id) {
        return Err(ApiError::bad_request(format!(
            "The connection_id in the request body does not match the URL parameter ({} != {id})",
            body.connection_id
        )));
    }
    let vault = vault(&state)?;
    let old = find(&state, &id).await?;
    if !old.stored {
        return Err(ApiError::bad_request(format!(
            "Connection `{}` is defined by SLUICE_CONN_{} or sluice.toml, not by the store: change it there",
            old.id,
            old.id.to_uppercase()
        )));
    }
    let Some(current) = old.parsed.as_ref() else {
        return Err(ApiError::bad_request(format!(
            "Connection `{}` cannot be decrypted with the configured {}",
            old.id,
            sluice_tasks::vault::KEY_VARIABLE
        )));
    };
    let mask: Vec<String> = mask
        .update_mask
        .iter()
        .flat_map(|m| m.split(','))
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    if let Some(bad) = mask.iter().find(|m| !FIELDS.contains(&m.as_str())) {
        return Err(ApiError::bad_request(format!(
            "Invalid field `{bad}` in update mask"
        )));
    }
    let wants = |f: &str| mask.is_empty() || mask.iter().any(|m| m == f);
    let mut parts = Parts {
        conn_type: current.conn_type.clone(),
        host: current.host.clone(),
        port: current.port.map(i64::from),
        login: current.login.clone(),
        password: current.password.clone(),
        schema: current.schema.clone(),
        extra: current.extra.clone(),
    };
    let mut description = old.description.clone();
    if wants("conn_type") {
        parts.conn_type = body.conn_type;
    }
    if wants("description") {
        description = body.description;
    }
    if wants("host") {
        parts.host = body.host;
    }
    if wants("login") {
        parts.login = body.login;
    }
    if wants("schema") {
        parts.schema = body.schema;
    }
    if wants("port") {
        parts.port = body.port;
    }
    if wants("password") && body.password.as_deref() != Some(MASK) {
        parts.password = body.password;
    }
    if wants("extra") {
        let mut extra = parse_extra(&body.extra)?;
        // Masked values sent back as they were shown keep what is stored.
        for (k, v) in extra.iter_mut() {
            if v == MASK {
                if let Some(old) = current.extra.get(k) {
                    v.clone_from(old);
                }
            }
        }
        parts.extra = extra;
    }
    let entry = save(&state, &vault, &old.id, description.as_deref(), &parts).await?;
    Ok(Json(response(&entry)))
}

/// Delete a stored connection.
#[utoipa::path(
    delete,
    path = "/api/v2/connections/{connection_id}",
    tag = "Connection",
    params(("connection_id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn delete_connection(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if !state.store.delete_connection(&id.to_lowercase()).await? {
        return Err(not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A masker for every secret value and connection password this API can know: from
/// the environment and sluice.toml, and those in the store (decrypted with the vault).
pub(crate) async fn masker(state: &AppState) -> ApiResult<Masker> {
    let mut values: Vec<String> = state.cfg.secrets.values();
    values.extend(state.cfg.connections.passwords());
    if let Some(vault) = &state.cfg.vault {
        for s in state.store.stored_secrets().await? {
            if let Ok(v) = vault.decrypt(&s.value_encrypted) {
                values.push(v);
            }
        }
        for c in state.store.stored_connections().await? {
            if let Some(pw) = vault
                .decrypt(&c.uri_encrypted)
                .ok()
                .and_then(|uri| Connection::parse(&c.conn_id, &uri).ok())
                .and_then(|c| c.password)
            {
                values.push(pw);
            }
        }
    }
    // Also as they appear inside JSON text (quotes and backslashes escaped).
    let escaped: Vec<String> = values
        .iter()
        .filter_map(|v| {
            let json = Value::String(v.clone()).to_string();
            let inner = &json[1..json.len() - 1];
            (inner != v).then(|| inner.to_string())
        })
        .collect();
    values.extend(escaped);
    Ok(Masker::new(values))
}
