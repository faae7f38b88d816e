//! The web UI over HTTP, on both backends: sessions, every page, live updates over
//! server-sent events, what a viewer may do, and that no page shows a secret.

mod common;

use std::time::{Duration, Instant};

use common::{both, TestApi, ADMIN_PASSWORD, VIEWER_PASSWORD};
use reqwest::{header, StatusCode};
use serde_json::json;

const SECRET: &str = "tok-9f8e7d6c5b4a";

const DAG: &str = r#"
[dag]
id = "ui_flow"
schedule = "None"
[params]
rows = 3
[tasks.extract]
kind = "shell"
command = "echo 'extracting {{ params.rows }} rows'; echo '{\"rows\": {{ params.rows }}, \"token\": \"{{ secrets.api_token }}\"}'"
[tasks.transform]
kind = "shell"
upstream = ["extract"]
command = "echo transforming"
[tasks.load]
kind = "noop"
upstream = ["transform"]
[tasks.audit]
kind = "noop"
upstream = ["extract"]
"#;

/// A browser-like client: keeps no cookies by itself and follows no redirects, so
/// the test sees each answer.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in through the form; the session cookie (`name=value`).
async fn login(api: &TestApi, user: &str, password: &str) -> String {
    let r = browser()
        .post(format!("{}/login", api.base))
        .form(&[
            ("username", user),
            ("password", password),
            ("next", "/dags/ui_flow"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "login answers with a redirect"
    );
    assert_eq!(r.headers()[header::LOCATION], "/dags/ui_flow");
    let cookie = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_string()
}

async fn page(api: &TestApi, cookie: &str, path: &str) -> String {
    let r = browser()
        .get(format!("{}{path}", api.base))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    let status = r.status();
    // minijinja escapes `/` in attributes as `&#x2f;`; the browser reads it as `/`.
    let body = r.text().await.unwrap().replace("&#x2f;", "/");
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    assert!(
        !body.contains(SECRET),
        "GET {path} shows the secret: {body}"
    );
    body
}

/// Reads server-sent events from `path` until one `live` event satisfies `done`.
async fn live_until(
    api: &TestApi,
    cookie: &str,
    path: &str,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut r = browser()
        .get(format!("{}{path}", api.base))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "GET {path}");
    assert!(r.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let deadline = Instant::now() + limit;
    let mut buf = String::new();
    let mut events = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, r.chunk())
            .await
            .unwrap_or_else(|_| panic!("no matching live event on {path} within {limit:?} ({events} events); last: {buf}"))
            .expect("stream")
            .expect("stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf[..end].to_string();
            buf.drain(..end + 2);
            if !event.contains("event: live") {
                continue;
            }
            events += 1;
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or(l.strip_prefix("data:")))
                .collect();
            let html = data.join("\n").replace("&#x2f;", "/");
            assert!(!html.contains(SECRET));
            if done(&html) {
                return html;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_need_a_session_show_every_run_and_update_live() {
    for (backend, mut api) in both().await {
        // Without a session a page sends the browser to the login page and back.
        let r = browser()
            .get(format!("{}/dags/ui_flow?runs=10", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{backend}");
        assert_eq!(
            r.headers()[header::LOCATION],
            "/login?next=%2Fdags%2Fui_flow%3Fruns%3D10"
        );
        let login_page = browser()
            .get(format!("{}/login", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(login_page.status(), StatusCode::OK);
        assert!(login_page
            .text()
            .await
            .unwrap()
            .contains(r#"name="password""#));
        let r = browser()
            .post(format!("{}/login", api.base))
            .form(&[("username", "admin"), ("password", "wrong-password")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert!(r.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/login?error=1"));
        assert!(r.headers().get(header::SET_COOKIE).is_none());
        // An open redirect is refused.
        let r = browser()
            .post(format!("{}/login", api.base))
            .form(&[
                ("username", "admin"),
                ("password", ADMIN_PASSWORD),
                ("next", "//evil.example/"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()[header::LOCATION], "/dags");

        let admin = login(&api, "admin", ADMIN_PASSWORD).await;
        api.write_dag("ui_flow.toml", DAG);
        api.write_dag(
            "broken.toml",
            "[dag]\nid = \"broken\"\nschedule = \"every day\"\n",
        );
        // Kept in the store, encrypted: the executor renders it, every page masks it.
        let sealed = api.vault().encrypt(SECRET);
        api.store
            .put_secret("api_token", &sealed, None)
            .await
            .unwrap();
        api.start_scheduler(64);
        api.wait_for("/api/v2/dags", Duration::from_secs(30), |b| {
            b["total_entries"] == 1
        })
        .await;
        api.wait_for("/api/v2/importErrors", Duration::from_secs(30), |b| {
            b["total_entries"] == 1
        })
        .await;

        let list = page(&api, &admin, "/dags").await;
        assert!(
            list.contains(r#"href="/dags/ui_flow""#),
            "{backend}: {list}"
        );
        assert!(
            list.contains("1 DAG file failed to import"),
            "{backend}: the import-error banner"
        );
        assert!(
            list.contains(r#"class="trigger" data-dag="ui_flow""#),
            "an admin sees the trigger button"
        );
        assert!(
            list.contains("&quot;rows&quot;: 3"),
            "the conf editor starts from the params: {list}"
        );
        let errors = page(&api, &admin, "/import-errors").await;
        assert!(errors.contains("broken.toml:"), "{errors}");

        // The grid is empty; its live stream shows the run as it goes.
        let grid = page(&api, &admin, "/dags/ui_flow").await;
        assert!(grid.contains(r#"id="no-runs""#), "{grid}");
        assert!(
            grid.contains(r#"data-live="/ui/events?view=grid&amp;dag_id=ui_flow&amp;runs=25""#),
            "{grid}"
        );

        // A cookie alone may read the API but not change anything (CSRF).
        let r = browser()
            .post(format!("{}/api/v2/dags/ui_flow/dagRuns", api.base))
            .header(header::COOKIE, &admin)
            .json(&json!({"dag_run_id": "r1", "conf": {"rows": 5}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{backend}");
        let stream = {
            let api_base = api.base.clone();
            let admin = admin.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                browser()
                    .post(format!("{api_base}/api/v2/dags/ui_flow/dagRuns"))
                    .header(header::COOKIE, &admin)
                    .header("X-Requested-With", "sluice")
                    .json(&json!({"dag_run_id": "r1", "conf": {"rows": 5}}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        };
        let html = live_until(
            &api,
            &admin,
            "/ui/events?view=grid&dag_id=ui_flow",
            Duration::from_secs(60),
            |h| h.contains(r#"data-run="r1" data-state="success""#),
        )
        .await;
        assert_eq!(stream.await.unwrap(), StatusCode::OK);
        assert_eq!(
            html.matches(r#"<a class="cell s-success""#).count(),
            4,
            "{backend}: {html}"
        );

        let grid = page(&api, &admin, "/dags/ui_flow").await;
        assert!(
            grid.contains(r#"href="/dags/ui_flow/runs/r1/tasks/extract""#),
            "{grid}"
        );
        let graph = page(&api, &admin, "/dags/ui_flow/graph").await;
        for task in ["extract", "transform", "load", "audit"] {
            assert!(
                graph.contains(&format!(r#"class="node s-success" data-task="{task}""#)),
                "{backend}: {task} in {graph}"
            );
        }
        assert_eq!(graph.matches(r#"class="edge""#).count(), 3);
        let run = page(&api, &admin, "/dags/ui_flow/runs/r1").await;
        assert!(run.contains(r#"id="run-state">success<"#), "{run}");
        assert_eq!(
            run.matches(r#"<rect class="bar s-success""#).count(),
            4,
            "one Gantt bar per try: {run}"
        );
        assert!(run.contains("&quot;rows&quot;: 5"), "the run's conf: {run}");
        let ti = page(&api, &admin, "/dags/ui_flow/runs/r1/tasks/extract").await;
        assert!(ti.contains(r#"id="ti-state">success<"#), "{ti}");
        assert!(
            ti.contains("extracting 5 rows"),
            "the rendered command: {ti}"
        );
        assert!(ti.contains("&quot;rows&quot;: 5"), "the XCom value: {ti}");
        assert!(
            ti.contains("***"),
            "the secret is masked in the rendered arguments and XCom: {ti}"
        );
        assert!(
            ti.contains(
                r#"data-url="/api/v2/dags/ui_flow/dagRuns/r1/taskInstances/extract/logs/1""#
            ),
            "{ti}"
        );
        assert!(ti.contains(r#"id="clear-btn""#), "an admin can clear");
        let log = api
            .get("/api/v2/dags/ui_flow/dagRuns/r1/taskInstances/extract/logs/1")
            .await;
        assert!(log.text.contains("task succeeded"), "{log:?}");

        // Other pages.
        api.post(
            "/api/v2/variables",
            json!({"key": "db_password", "value": "hunter2-pw"}),
        )
        .await;
        api.post(
            "/api/v2/variables",
            json!({"key": "region", "value": "eu-west-1"}),
        )
        .await;
        let vars = page(&api, &admin, "/variables").await;
        assert!(
            vars.contains("eu-west-1") && !vars.contains("hunter2-pw"),
            "{vars}"
        );
        let r = api
            .post(
                "/api/v2/connections",
                json!({"connection_id": "pg_main", "conn_type": "postgres", "host": "db.local", "login": "etl", "password": "s3cr3t-conn-pw", "port": 5432}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        let conns = page(&api, &admin, "/connections").await;
        assert!(
            conns.contains("pg_main") && conns.contains("db.local"),
            "{conns}"
        );
        assert!(!conns.contains("s3cr3t-conn-pw"), "{conns}");
        let pools = page(&api, &admin, "/pools").await;
        assert!(pools.contains("default_pool"), "{pools}");

        // A viewer reads everything but gets no buttons, and the API refuses its writes.
        let viewer = login(&api, "viewer", VIEWER_PASSWORD).await;
        let list = page(&api, &viewer, "/dags").await;
        assert!(!list.contains(r#"class="trigger""#), "{list}");
        assert!(
            list.contains("disabled"),
            "a viewer's pause toggle is disabled"
        );
        let ti = page(&api, &viewer, "/dags/ui_flow/runs/r1/tasks/extract").await;
        assert!(!ti.contains(r#"id="clear-btn""#));
        let r = browser()
            .post(format!("{}/api/v2/dags/ui_flow/dagRuns", api.base))
            .header(header::COOKIE, &viewer)
            .header("X-Requested-With", "sluice")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{backend}: a viewer cannot trigger"
        );

        // Unknown things are a page saying so, with the status.
        let r = browser()
            .get(format!("{}/dags/nope", api.base))
            .header(header::COOKIE, &admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(r.text().await.unwrap().contains("nope"));
        let r = browser()
            .get(format!("{}/ui/events?view=bogus", api.base))
            .header(header::COOKIE, &admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);

        // Logging out ends the session in the browser.
        let r = browser()
            .post(format!("{}/logout", api.base))
            .header(header::COOKIE, &admin)
            .send()
            .await
            .unwrap();
        assert!(r.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"));
        api.stop().await;
    }
}
