//! Login and logout for the UI: the session cookie carries the API's JWT.

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use crate::auth::{self, SESSION_COOKIE};
use crate::AppState;

/// Pages need a session; without one (or with an expired one) a browser is sent to
/// the login page, which brings it back afterwards.
pub async fn require_session(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let user = match auth::session_token(req.headers()) {
        Some(token) => auth::user_of_token(&state, token).await.ok(),
        None => None,
    };
    let Some(user) = user else {
        let back = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        if req.uri().path() == "/ui/events" {
            return (StatusCode::UNAUTHORIZED, "session expired: log in again").into_response();
        }
        let to = format!("/login?next={}", super::url_part(&back));
        return Redirect::to(&to).into_response();
    };
    req.extensions_mut().insert(user);
    next.run(req).await
}

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    next: Option<String>,
    error: Option<String>,
}

pub async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    super::render(
        "login.html",
        minijinja::context! { next => safe_next(q.next.as_deref()), error => q.error },
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

pub async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref());
    let user = match auth::check_password(&state, form.username.trim(), &form.password).await {
        Ok(u) => u,
        Err(_) => {
            let to = format!("/login?error=1&next={}", super::url_part(&next));
            return Redirect::to(&to).into_response();
        }
    };
    let token = match state.keys.issue(&user) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        state.keys.ttl.as_secs()
    );
    let mut resp = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

pub async fn logout() -> Response {
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("sluice_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

/// Only a path on this site: never an absolute or protocol-relative URL (an open
/// redirect would let a link log a user in and send them elsewhere).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") => {
            n.to_string()
        }
        _ => "/dags".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn login_redirects_only_within_the_site() {
        assert_eq!(safe_next(Some("/dags/x?runs=5")), "/dags/x?runs=5");
        assert_eq!(safe_next(Some("//evil.example")), "/dags");
        assert_eq!(safe_next(Some("https://evil.example")), "/dags");
        assert_eq!(safe_next(None), "/dags");
    }
}
