//! Black-box harness: the API router served on 127.0.0.1:0 over a fresh migrated store
//! (SQLite or PostgreSQL), two users (admin and viewer), and, for tests that run
//! tasks, the real scheduler and executor of the `sluice` crate in the same process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use sluice_store::testing::TestDb;
use sluice_store::Store;
use sluice_web::{AppState, WebConfig};
use tokio_util::sync::CancellationToken;

pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const VIEWER_PASSWORD: &str = "viewer-password-1";

pub struct TestApi {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub db: Option<TestDb>,
    pub home: tempfile::TempDir,
    pub admin: String,
    pub viewer: String,
    /// The Fernet key the API encrypts connections with (None: none configured).
    pub fernet_key: Option<String>,
    stop: CancellationToken,
    scheduler: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    wakers: sluice::Wakers,
}

/// A response: status and body (JSON when it parses, else the text as a string).
pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
    pub content_type: String,
}

impl Resp {
    /// The `detail` of an error, as text (a 422's list rendered as JSON).
    pub fn detail(&self) -> String {
        match &self.body["detail"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text)
    }
}

/// Both backends, each with its own API server (with a Fernet key).
pub async fn both() -> Vec<(&'static str, TestApi)> {
    let mut out = Vec::new();
    for (name, db) in TestDb::both().await {
        out.push((name, TestApi::start(db).await));
    }
    out
}

/// Both backends, with an API that has no Fernet key configured.
pub async fn both_without_key() -> Vec<(&'static str, TestApi)> {
    let mut out = Vec::new();
    for (name, db) in TestDb::both().await {
        out.push((name, TestApi::start_with(db, None).await));
    }
    out
}

impl TestApi {
    pub async fn start(db: TestDb) -> TestApi {
        TestApi::start_with(db, Some(sluice_tasks::Vault::generate_key())).await
    }

    /// The vault of this API's key.
    pub fn vault(&self) -> sluice_tasks::Vault {
        sluice_tasks::Vault::new(self.fernet_key.as_deref().expect("a key")).unwrap()
    }

    pub async fn start_with(db: TestDb, fernet_key: Option<String>) -> TestApi {
        let store = db.store.clone();
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(home.path().join("dags")).unwrap();
        assert!(
            sluice_web::create_user(&store, "admin", ADMIN_PASSWORD, "admin")
                .await
                .unwrap()
        );
        assert!(
            sluice_web::create_user(&store, "viewer", VIEWER_PASSWORD, "viewer")
                .await
                .unwrap()
        );
        let wakers = sluice::Wakers::default();
        let (sw, ew) = (wakers.scheduler.clone(), wakers.executor.clone());
        let mut web = WebConfig::new(home.path());
        web.vault = fernet_key
            .as_deref()
            .map(|k| std::sync::Arc::new(sluice_tasks::Vault::new(k).unwrap()));
        let state = AppState::new(store.clone(), web)
            .await
            .expect("state")
            .on_new_work(move || {
                sw.notify_one();
                ew.notify_one();
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(sluice_web::serve(listener, state, async move {
            s.cancelled().await
        }));
        let mut api = TestApi {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            store,
            db: Some(db),
            home,
            admin: String::new(),
            viewer: String::new(),
            fernet_key,
            stop,
            scheduler: None,
            wakers,
        };
        api.admin = api.token("admin", ADMIN_PASSWORD).await;
        api.viewer = api.token("viewer", VIEWER_PASSWORD).await;
        api
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.home().join("logs")
    }

    pub async fn token(&self, user: &str, password: &str) -> String {
        let r = self
            .client
            .post(format!("{}/auth/token", self.base))
            .json(&serde_json::json!({"username": user, "password": password}))
            .send()
            .await
            .expect("token request");
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        into_resp(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, Some(&self.admin.clone()), None)
            .await
    }

    /// GET that must succeed; its JSON body.
    pub async fn ok(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {r:?}");
        r.body
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send(Method::POST, path, Some(&self.admin.clone()), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.send(Method::PATCH, path, Some(&self.admin.clone()), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, Some(&self.admin.clone()), None)
            .await
    }

    /// Records a DAG from TOML source directly in the store (no scheduler).
    pub async fn add_dag(&self, src: &str) -> String {
        let registry = sluice_tasks::Registry::builtin();
        let dag = sluice_core::loader::parse_dag(src, Path::new("/dags/test.toml"), &registry)
            .unwrap_or_else(|d| panic!("bad test DAG: {d:?}"));
        let mut dag = dag;
        dag.fileloc = format!("/dags/{}.toml", dag.dag_id);
        self.store.sync_dag(&dag, false).await.expect("sync dag");
        dag.dag_id
    }

    /// Writes a DAG file for the scheduler to pick up.
    pub fn write_dag(&self, file: &str, src: &str) {
        std::fs::write(self.home().join("dags").join(file), src).expect("write DAG");
    }

    /// Starts the real scheduler and executor on this store, reading `$home/dags`.
    pub fn start_scheduler(&mut self, xcom_inline_max_bytes: usize) {
        let url = self.db.as_ref().unwrap().url.clone();
        let cfg = sluice::config::Config {
            home: self.home().to_path_buf(),
            database_url: Some(url),
            dags_folder: self.home().join("dags"),
            parallelism: 4,
            xcom_inline_max_bytes,
            dags_paused_at_creation: false,
            fernet_key: self.fernet_key.clone(),
            scheduler: sluice::config::SchedulerConfig {
                loop_interval_ms: 50,
                dag_refresh_interval_ms: 100,
                heartbeat_interval_ms: 200,
                worker_timeout_ms: 10_000,
                shutdown_grace_ms: 500,
                db_connect_patience_ms: 1000,
            },
            ..Default::default()
        };
        let store = self.store.clone();
        let stop = self.stop.clone();
        let wakers = self.wakers.clone();
        self.scheduler = Some(tokio::spawn(async move {
            sluice::run_scheduler_and_executor_woken(
                &cfg,
                store,
                sluice_tasks::Registry::builtin(),
                stop,
                wakers,
            )
            .await
        }));
    }

    /// Polls GET `path` until `done` holds for its JSON, at most `limit`.
    pub async fn wait_for(
        &self,
        path: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.get(path).await;
            if r.status == StatusCode::OK && done(&r.body) {
                return r.body;
            }
            if Instant::now() > deadline {
                panic!("timed out after {limit:?} waiting on {path}; last answer: {r:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(h) = self.scheduler.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
        if let Some(db) = self.db.take() {
            db.cleanup().await;
        }
    }
}

pub async fn into_resp(r: reqwest::Response) -> Resp {
    let status = r.status();
    let content_type = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    Resp {
        status,
        body,
        text,
        content_type,
    }
}
