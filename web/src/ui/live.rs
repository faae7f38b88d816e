//! `/ui/events`: a page's live block, pushed over server-sent events when it changes.
//!
//! The server re-renders the block with the page's own context builder every
//! [`INTERVAL`] while the page is open, and sends it only when its text changed. That
//! works whatever process (scheduler, worker) changed the store and needs no change
//! feed. Open pages of the same view and role share their renders ([`SharedRenders`]):
//! a team watching one grid costs one render per interval, not one per viewer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::Stream;
use serde::Deserialize;

use super::pages;
use crate::error::ApiResult;
use crate::{AppState, User};

/// How often an open page is re-rendered.
pub const INTERVAL: Duration = Duration::from_millis(500);

/// How old a render another open page made may be and still be used.
const SHARE_AGE: Duration = Duration::from_millis(250);

/// Recent live-block renders by view and role (the live blocks show no more of the
/// user than whether they are an admin), so that open pages of the same view reuse
/// one render instead of each querying the store.
#[derive(Default)]
pub(crate) struct SharedRenders {
    renders: Mutex<HashMap<String, (Instant, Arc<str>)>>,
}

impl SharedRenders {
    /// Entries kept before old ones are dropped.
    const PRUNE_ABOVE: usize = 256;

    fn fresh(&self, key: &str, now: Instant) -> Option<Arc<str>> {
        let renders = self.renders.lock().expect("live renders");
        renders
            .get(key)
            .filter(|(at, _)| now.saturating_duration_since(*at) <= SHARE_AGE)
            .map(|(_, html)| html.clone())
    }

    fn keep(&self, key: String, html: Arc<str>, now: Instant) {
        let mut renders = self.renders.lock().expect("live renders");
        if renders.len() >= Self::PRUNE_ABOVE {
            renders.retain(|_, (at, _)| now.saturating_duration_since(*at) <= SHARE_AGE);
        }
        renders.insert(key, (now, html));
    }
}

#[derive(Deserialize, Clone, Debug)]
pub struct LiveQuery {
    view: String,
    dag_id: Option<String>,
    run_id: Option<String>,
    task_id: Option<String>,
    map_index: Option<i64>,
    try_number: Option<i64>,
    runs: Option<usize>,
}

async fn render_view(state: &AppState, user: &User, q: &LiveQuery) -> ApiResult<Option<String>> {
    let need = |v: &Option<String>, what: &str| {
        v.clone().ok_or_else(|| {
            crate::error::ApiError::bad_request(format!("view {} needs {what}", q.view))
        })
    };
    let (template, ctx) = match q.view.as_str() {
        "dags" => ("dags.html", pages::dag_list_ctx(state, user).await?),
        "grid" => (
            "grid.html",
            pages::grid_ctx(
                state,
                user,
                &need(&q.dag_id, "dag_id")?,
                q.runs.unwrap_or(25),
            )
            .await?,
        ),
        "graph" => (
            "graph.html",
            pages::graph_ctx(
                state,
                user,
                &need(&q.dag_id, "dag_id")?,
                q.run_id.as_deref(),
            )
            .await?,
        ),
        "run" => (
            "run.html",
            pages::run_ctx(
                state,
                user,
                &need(&q.dag_id, "dag_id")?,
                &need(&q.run_id, "run_id")?,
            )
            .await?,
        ),
        "try" => {
            let tq = pages::TryQuery {
                map_index: q.map_index,
                try_number: q.try_number,
            };
            (
                "try.html",
                pages::try_ctx(
                    state,
                    user,
                    &need(&q.dag_id, "dag_id")?,
                    &need(&q.run_id, "run_id")?,
                    &need(&q.task_id, "task_id")?,
                    &tq,
                )
                .await?,
            )
        }
        other => {
            return Err(crate::error::ApiError::bad_request(format!(
                "unknown view {other:?}: one of dags, grid, graph, run, try"
            )))
        }
    };
    super::render_live(template, ctx)
        .map(Some)
        .map_err(|e| crate::error::ApiError::internal(format!("cannot render {template}: {e}")))
}

/// The key renders are shared under: the view with its parameters, and the role.
fn share_key(user: &User, q: &LiveQuery) -> String {
    format!("{}|{q:?}", user.is_admin())
}

/// The view's live block: another open page's render when it is recent enough, else a
/// new one, kept for the others.
async fn shared_render(
    state: &AppState,
    user: &User,
    q: &LiveQuery,
) -> ApiResult<Option<Arc<str>>> {
    let key = share_key(user, q);
    if let Some(html) = state.live_renders.fresh(&key, Instant::now()) {
        return Ok(Some(html));
    }
    let Some(html) = render_view(state, user, q).await? else {
        return Ok(None);
    };
    let html: Arc<str> = html.into();
    state.live_renders.keep(key, html.clone(), Instant::now());
    Ok(Some(html))
}

fn digest(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

pub async fn events(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Query(q): Query<LiveQuery>,
) -> Response {
    // A bad view is answered at once, not as an endless stream of errors.
    if let Err(e) = render_view(&state, &user, &q).await {
        return e.into_response();
    }
    Sse::new(stream(state, user, q))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn stream(
    state: AppState,
    user: User,
    q: LiveQuery,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let ticker = tokio::time::interval(INTERVAL);
    futures::stream::unfold((ticker, None::<u64>), move |(mut ticker, last)| {
        let (state, user, q) = (state.clone(), user.clone(), q.clone());
        async move {
            loop {
                ticker.tick().await;
                match shared_render(&state, &user, &q).await {
                    Ok(Some(html)) => {
                        let d = digest(&html);
                        if last != Some(d) {
                            let ev = Event::default().event("live").data(&*html);
                            return Some((Ok(ev), (ticker, Some(d))));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let ev = Event::default().event("problem").data(e.detail_text());
                        return Some((Ok(ev), (ticker, last)));
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_render_is_shared_while_recent_and_never_across_roles() {
        let shared = SharedRenders::default();
        let t0 = Instant::now();
        let q: LiveQuery =
            serde_json::from_value(serde_json::json!({"view": "grid", "dag_id": "d"})).unwrap();
        let admin = User {
            username: "a".into(),
            role: crate::ADMIN.into(),
        };
        let viewer = User {
            username: "v".into(),
            role: "viewer".into(),
        };
        let other_admin = User {
            username: "b".into(),
            role: crate::ADMIN.into(),
        };
        shared.keep(share_key(&admin, &q), "<p>admin</p>".into(), t0);
        let later = t0 + SHARE_AGE;
        assert_eq!(
            shared.fresh(&share_key(&other_admin, &q), later).as_deref(),
            Some("<p>admin</p>"),
            "another admin on the same view reuses the render"
        );
        assert_eq!(shared.fresh(&share_key(&viewer, &q), later), None);
        let other_view: LiveQuery =
            serde_json::from_value(serde_json::json!({"view": "grid", "dag_id": "e"})).unwrap();
        assert_eq!(shared.fresh(&share_key(&admin, &other_view), later), None);
        assert_eq!(
            shared.fresh(&share_key(&admin, &q), later + Duration::from_millis(1)),
            None,
            "a render older than SHARE_AGE is made again"
        );
    }

    #[test]
    fn old_renders_are_dropped_once_many_views_were_seen() {
        let shared = SharedRenders::default();
        let t0 = Instant::now();
        for i in 0..SharedRenders::PRUNE_ABOVE {
            shared.keep(format!("k{i}"), "x".into(), t0);
        }
        shared.keep("new".into(), "y".into(), t0 + SHARE_AGE * 2);
        assert_eq!(shared.renders.lock().unwrap().len(), 1);
    }
}
