//! Authentication and roles, as Airflow 3's simple auth manager: `POST /auth/token`
//! with a username and password returns a JWT (`{"access_token": …}`) to send as
//! `Authorization: Bearer …`; scripts may send HTTP basic credentials instead.
//! Passwords are kept only as argon2 hashes. Two roles: `admin` may do everything,
//! `viewer` may only read (any request but GET/HEAD is a 403 for it).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::extract::parse_json;
use crate::AppState;

pub const ADMIN: &str = "admin";
pub const VIEWER: &str = "viewer";
pub const ROLES: [&str; 2] = [ADMIN, VIEWER];

/// The web UI's session cookie: the same JWT the API hands out, kept `HttpOnly` and
/// `SameSite=Strict` so page scripts cannot read it and other sites cannot send it.
pub const SESSION_COOKIE: &str = "sluice_session";

/// A request authenticated by the session cookie may change something only when it
/// also carries this header: a cross-site form cannot set it (CSRF), the UI's
/// scripts always do.
pub const UI_HEADER: &str = "x-requested-with";

/// The session cookie's token, if the request has one.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Who is calling, as the store knows them now (a changed role counts at once).
#[derive(Clone, Debug)]
pub struct User {
    pub username: String,
    pub role: String,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.role == ADMIN
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    iat: i64,
    exp: i64,
    iss: String,
}

const ISSUER: &str = "sluice";

/// The signing keys of the API's tokens.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub ttl: Duration,
}

impl Keys {
    pub fn new(secret: &str, ttl: Duration) -> Keys {
        Keys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            ttl,
        }
    }

    pub(crate) fn issue(&self, user: &User) -> ApiResult<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user.username.clone(),
            role: user.role.clone(),
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
            iss: ISSUER.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    /// The username a valid, unexpired token names.
    fn verify(&self, token: &str) -> Result<String, String> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims.sub)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    "the token has expired".to_string()
                }
                _ => format!("invalid token: {e}"),
            })
    }
}

/// A random signing secret (256 bits).
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A random password for a generated account: 20 letters and digits (~119 bits).
pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 20)
}

/// The argon2id hash (PHC string, random salt) of a password.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| anyhow::anyhow!("cannot make a salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Creates a user (`sluice users create`); false when the username is taken.
pub async fn create_user(
    store: &sluice_store::Store,
    username: &str,
    password: &str,
    role: &str,
) -> anyhow::Result<bool> {
    anyhow::ensure!(
        ROLES.contains(&role),
        "unknown role {role:?}: use admin or viewer"
    );
    anyhow::ensure!(!username.trim().is_empty(), "the username is empty");
    anyhow::ensure!(
        password.len() >= 8,
        "the password must have at least 8 characters"
    );
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password)).await??;
    Ok(store.create_user(username, &hash, role).await?)
}

/// Credentials that verified recently, so that scripts sending basic auth on every
/// request pay for argon2 once. Keys are keyed BLAKE2b digests of (username, password,
/// stored hash): no password is kept, and a changed password or hash misses.
pub struct VerifiedCache {
    key: [u8; 32],
    seen: Mutex<HashSet<[u8; 32]>>,
}

/// Entries kept at most; the cache is emptied when full.
const VERIFIED_CACHE_MAX: usize = 1024;

impl VerifiedCache {
    pub fn new() -> VerifiedCache {
        VerifiedCache {
            key: rand::random(),
            seen: Mutex::new(HashSet::new()),
        }
    }

    fn digest(&self, username: &str, password: &str, hash: &str) -> [u8; 32] {
        use blake2::digest::{KeyInit, Mac};
        type Blake2b256 = blake2::Blake2bMac<blake2::digest::consts::U32>;
        let mut mac =
            <Blake2b256 as KeyInit>::new_from_slice(&self.key).expect("a 32-byte key fits BLAKE2b");
        for part in [username, password, hash] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    fn contains(&self, d: &[u8; 32]) -> bool {
        self.seen.lock().map(|s| s.contains(d)).unwrap_or(false)
    }

    fn insert(&self, d: [u8; 32]) {
        if let Ok(mut s) = self.seen.lock() {
            if s.len() >= VERIFIED_CACHE_MAX {
                s.clear();
            }
            s.insert(d);
        }
    }
}

impl Default for VerifiedCache {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) async fn check_password(
    state: &AppState,
    username: &str,
    password: &str,
) -> ApiResult<User> {
    let bad = || ApiError::unauthorized("Invalid username or password");
    let Some(row) = state.store.user(username).await? else {
        return Err(bad());
    };
    let digest = state
        .verified
        .digest(username, password, &row.password_hash);
    if !state.verified.contains(&digest) {
        let password = password.to_string();
        let hash = row.password_hash.clone();
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(ApiError::internal)?;
        if !ok {
            return Err(bad());
        }
        state.verified.insert(digest);
    }
    Ok(User {
        username: row.username,
        role: row.role,
    })
}

/// The user a token names, if it is valid and the user still exists.
pub(crate) async fn user_of_token(state: &AppState, token: &str) -> ApiResult<User> {
    let username = state.keys.verify(token).map_err(ApiError::unauthorized)?;
    let row = state
        .store
        .user(&username)
        .await?
        .ok_or_else(|| ApiError::unauthorized(format!("user {username} no longer exists")))?;
    Ok(User {
        username: row.username,
        role: row.role,
    })
}

/// The caller named by the request's credentials (bearer token or basic auth).
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> ApiResult<User> {
    if headers.get(header::AUTHORIZATION).is_none() {
        if let Some(token) = session_token(headers) {
            return user_of_token(state, token).await;
        }
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "Not authenticated: send Authorization: Bearer <token> (from POST /auth/token) or HTTP basic credentials",
            )
        })?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => user_of_token(state, rest.trim()).await,
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::unauthorized("malformed basic credentials"))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| ApiError::unauthorized("malformed basic credentials"))?;
            check_password(state, user, password).await
        }
        _ => Err(ApiError::unauthorized(format!(
            "unsupported authorization scheme {scheme:?}: use Bearer or Basic"
        ))),
    }
}

/// Paths anyone may call. `/api/v2/version` is public in Airflow too: its Python
/// client sends no credentials there. The web UI's pages (anything outside `/api` and
/// `/auth`) check the session themselves and send a browser to the login page.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/api/v2/monitor/health" | "/api/v2/version" | "/auth/token"
    ) || !(path.starts_with("/api/") || path.starts_with("/auth/"))
}

/// Authenticates every request but the public ones, and lets only admins change
/// anything. The caller is put in the request's extensions.
pub async fn require_auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let user = match authenticate(&state, req.headers()).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let read = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let by_cookie = req.headers().get(header::AUTHORIZATION).is_none();
    if !read && by_cookie && req.headers().get(UI_HEADER).is_none() {
        return ApiError::forbidden(format!(
            "a request authenticated by the session cookie must send the {UI_HEADER} header to change anything"
        ))
        .into_response();
    }
    if !read && !user.is_admin() {
        return ApiError::forbidden(format!(
            "user {} has role {} and may only read; {} {} needs the admin role",
            user.username,
            user.role,
            req.method(),
            req.uri().path()
        ))
        .into_response();
    }
    req.extensions_mut().insert(user);
    next.run(req).await
}

/// Credentials for a token.
#[derive(Deserialize, ToSchema)]
pub struct LoginBody {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub access_token: String,
}

/// Exchange a username and password for a JWT (JSON or form-encoded body).
#[utoipa::path(
    post,
    path = "/auth/token",
    tag = "Login",
    request_body(content = LoginBody, content_type = "application/json"),
    responses(
        (status = 201, description = "A token to send as `Authorization: Bearer …`", body = LoginResponse),
        (status = 401, description = "Wrong username or password", body = crate::error::HTTPExceptionResponse),
        (status = 422, description = "Missing username or password", body = crate::error::HTTPValidationError),
    ),
    security(())
)]
pub async fn create_token(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let bytes = axum::body::Bytes::from_request(req, &state)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    let body: LoginBody = if form {
        serde_html_form::from_bytes(&bytes).map_err(|e| {
            ApiError::invalid(&["body"], format!("expected username and password: {e}"))
        })?
    } else {
        parse_json(&bytes)?
    };
    let user = check_password(&state, &body.username, &body.password).await?;
    let token = state.keys.issue(&user)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(LoginResponse {
            access_token: token,
        }),
    )
        .into_response())
}
