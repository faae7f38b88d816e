//! The web UI end to end in a real headless Chromium (Debian's `chromium`, driven by
//! its `chromedriver`; .ci/run installs both): log in, trigger a DAG from the DAG
//! list, watch the run succeed in the grid without reloading the page, open a task's
//! log, and save screenshots under the test's output directory
//! (`target/tmp/ui_browser/`).

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TestApi, ADMIN_PASSWORD};
use fantoccini::{Client, ClientBuilder, Locator};
use sluice_store::testing::TestDb;

const DAG: &str = r#"
[dag]
id = "ui_e2e"
schedule = "None"
[params]
rows = 2
[tasks.extract]
kind = "shell"
command = "echo 'extracting {{ params.rows }} rows'; sleep 3; echo '{\"rows\": {{ params.rows }}}'"
[tasks.load]
kind = "shell"
upstream = ["extract"]
command = "echo loading"
"#;

fn tool(env: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_string()));
    assert!(
        path.exists(),
        "{} not found: install Debian's chromium and chromium-driver (scripts/browser.sh does) or set {env}",
        path.display()
    );
    path
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    _child: tokio::process::Child,
    url: String,
}

async fn chromedriver() -> Driver {
    let exe = tool("SLUICE_CHROMEDRIVER", "/usr/bin/chromedriver");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(exe)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on port {port} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driver {
        _child: child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn browser(driver: &Driver) -> Client {
    let chromium = tool("SLUICE_CHROMIUM", "/usr/bin/chromium");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            // No background networking: on a machine without internet, Chromium's own
            // update and sync connections are refused and only add noise and delay.
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-quic",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Waits until `check` holds, polling, at most `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to 10 s for an element to appear. Unlike fantoccini's `wait()`, a command
/// that a page navigation aborts (the form submit or the trigger's redirect landing
/// mid-poll) is retried rather than failing the test.
async fn appears(c: &Client, css: &str, what: &str) {
    eventually(what, Duration::from_secs(10), || async {
        c.find(Locator::Css(css)).await.is_ok()
    })
    .await;
}

/// An attribute read in one script call, so a live update that swaps the element
/// between a find and a read cannot make the read fail.
async fn attr(c: &Client, css: &str, name: &str) -> Option<String> {
    let value = c
        .execute(
            "const el = document.querySelector(arguments[0]); return el ? el.getAttribute(arguments[1]) : null;",
            vec![css.into(), name.into()],
        )
        .await
        .expect("run a script in the page");
    value.as_str().map(str::to_string)
}

/// An element's rendered text, read in one script call (see [`attr`]).
async fn text_of(c: &Client, css: &str) -> Option<String> {
    let value = c
        .execute(
            "const el = document.querySelector(arguments[0]); return el ? el.innerText : null;",
            vec![css.into()],
        )
        .await
        .ok()?;
    value.as_str().map(str::to_string)
}

async fn screenshot(c: &Client, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui_browser");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = dir.join(name);
    std::fs::write(&path, png).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_in_trigger_watch_the_grid_and_read_a_log_in_chromium() {
    let mut api = TestApi::start(TestDb::sqlite().await).await;
    api.write_dag("ui_e2e.toml", DAG);
    api.start_scheduler(64);
    api.wait_for("/api/v2/dags", Duration::from_secs(30), |b| {
        b["total_entries"] == 1
    })
    .await;
    let driver = chromedriver().await;
    let c = browser(&driver).await;

    // A page without a session goes to the login form.
    c.goto(&format!("{}/dags", api.base)).await.unwrap();
    let url = c.current_url().await.unwrap();
    assert_eq!(url.path(), "/login", "{url}");
    c.find(Locator::Css("#username"))
        .await
        .unwrap()
        .send_keys("admin")
        .await
        .unwrap();
    c.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(ADMIN_PASSWORD)
        .await
        .unwrap();
    c.find(Locator::Css("#login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    appears(
        &c,
        r#"a.dag-link[href="/dags/ui_e2e"]"#,
        "the DAG list after logging in",
    )
    .await;

    // Trigger from the DAG list: the conf editor starts from the DAG's params.
    // The button sits in the live block, which the first server-sent event replaces:
    // a click that lands on the replaced button finds it again.
    eventually(
        "the trigger button can be clicked",
        Duration::from_secs(10),
        || async {
            match c
                .find(Locator::Css(r#"button.trigger[data-dag="ui_e2e"]"#))
                .await
            {
                Ok(button) => button.click().await.is_ok(),
                Err(_) => false,
            }
        },
    )
    .await;
    let conf = c.find(Locator::Css("#trigger-conf")).await.unwrap();
    let text = conf.prop("value").await.unwrap().unwrap_or_default();
    assert!(text.contains("\"rows\": 2"), "{text}");
    conf.clear().await.unwrap();
    conf.send_keys(r#"{"rows": 7}"#).await.unwrap();
    c.find(Locator::Css("#trigger-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The grid opens while the run is still going, and turns green by itself.
    appears(&c, "#grid a.runbar", "the grid shows the new run").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/dags/ui_e2e");
    let first = attr(&c, "#grid a.runbar", "data-state")
        .await
        .unwrap_or_default();
    assert_ne!(
        first, "success",
        "the run takes three seconds; the page opened before it ended"
    );
    eventually(
        "the grid shows the run succeeded",
        Duration::from_secs(60),
        || async {
            c.find(Locator::Css(r#"#grid a.runbar[data-state="success"]"#))
                .await
                .is_ok()
        },
    )
    .await;
    let updated = attr(&c, "#live", "data-updated").await;
    assert!(
        updated.is_some(),
        "the grid was updated in place by server-sent events, not reloaded"
    );
    let grid_png = screenshot(&c, "grid.png").await;

    // Open the first task's try and read its log.
    eventually(
        "the extract cell can be clicked",
        Duration::from_secs(10),
        || async {
            // A live update may swap the cell between find and click: find again.
            if let Ok(cell) = c
                .find(Locator::Css(r#"#grid a.cell[data-task="extract"]"#))
                .await
            {
                let _ = cell.click().await;
            }
            c.current_url()
                .await
                .is_ok_and(|url| url.path().ends_with("/tasks/extract"))
        },
    )
    .await;
    eventually(
        "the try page shows the task's log",
        Duration::from_secs(20),
        || async {
            text_of(&c, "#log")
                .await
                .is_some_and(|log| log.contains("task succeeded"))
        },
    )
    .await;
    let log = text_of(&c, "#log").await.unwrap_or_default();
    assert!(
        log.contains("extracting 7 rows"),
        "the run used the edited conf: {log}"
    );
    let xcom = text_of(&c, "#xcom").await.unwrap_or_default();
    assert!(xcom.contains("\"rows\": 7"), "{xcom}");
    let try_png = screenshot(&c, "try.png").await;
    eprintln!("screenshots: {} {}", grid_png.display(), try_png.display());

    // A try page opened before its task starts follows the try's log once it does.
    let r = api
        .post(
            "/api/v2/dags/ui_e2e/dagRuns",
            serde_json::json!({"dag_run_id": "r2"}),
        )
        .await;
    assert_eq!(r.status, reqwest::StatusCode::OK, "{r:?}");
    c.goto(&format!("{}/dags/ui_e2e/runs/r2/tasks/load", api.base))
        .await
        .unwrap();
    let shown = c
        .execute(
            "const el = document.getElementById('log-none'); return !!el && el.checkVisibility();",
            vec![],
        )
        .await
        .expect("run a script in the page");
    assert_eq!(
        shown,
        serde_json::Value::Bool(true),
        "load waits for extract (3 s): no log yet"
    );
    eventually(
        "the page follows load's log once it runs",
        Duration::from_secs(30),
        || async {
            text_of(&c, "#log")
                .await
                .is_some_and(|log| log.contains("loading"))
        },
    )
    .await;

    c.close().await.unwrap();
    api.stop().await;
}
