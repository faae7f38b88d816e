//! The REST API in the real binary: `sluice standalone` creates an admin with a
//! generated password (printed once), serves health without a token and the DAGs with
//! one, and runs what the API triggers; `sluice users create` and `sluice web`.

mod common;

use std::time::Duration;

use common::{block_on, serial, wait_until, Sandbox};
use serde_json::{json, Value};

const DAG: &str = r#"[dag]
id = "api_hello"
schedule = "None"

[tasks.hello]
kind = "shell"
command = "echo '{\"greeting\": \"{{ dag_run.conf.name }}\"}'"
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The stdout a spawned daemon wrote (see `Sandbox::spawn` for the file's name).
fn daemon_stdout(sb: &Sandbox, args: &[&str], n: u32) -> String {
    std::fs::read_to_string(sb.path().join(format!("{}-{n}.stdout", args.join("_"))))
        .unwrap_or_default()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

async fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

#[test]
fn standalone_prints_a_generated_admin_password_and_serves_the_api() {
    let _guard = serial();
    let sb = Sandbox::new();
    sb.write_dag("api_hello.toml", DAG);
    let port = free_port().to_string();
    let args = ["standalone", "--port", port.as_str()];
    let mut daemon = sb.spawn(&args);
    daemon.wait_ready();
    let base = format!("http://127.0.0.1:{port}");

    let password = wait_until(
        "the admin password on stdout",
        Duration::from_secs(20),
        &[&daemon],
        || {
            let out = daemon_stdout(&sb, &args, 1);
            out.lines()
                .find_map(|l| l.strip_prefix("Login with username admin and password "))
                .map(|p| p.trim().to_string())
                .ok_or(out)
        },
    );
    assert_eq!(password.len(), 20, "{password}");
    assert_ne!(password, "admin");

    block_on(async {
        let (status, health) = get(&format!("{base}/api/v2/monitor/health"), None).await;
        assert_eq!(status, 200, "{health}");
        assert_eq!(health["metadatabase"]["status"], "healthy");
        let (status, _) = get(&format!("{base}/api/v2/dags"), None).await;
        assert_eq!(status, 401);

        let r = client()
            .post(format!("{base}/auth/token"))
            .json(&json!({"username": "admin", "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let token = r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string();

        // The scheduler records the DAG from its folder; the API lists it.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (status, dags) = get(&format!("{base}/api/v2/dags"), Some(&token)).await;
            assert_eq!(status, 200, "{dags}");
            if dags["total_entries"] == 1 {
                assert_eq!(dags["dags"][0]["dag_id"], "api_hello");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "DAG never listed: {dags}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A run triggered through the API runs in the same process.
        let r = client()
            .post(format!("{base}/api/v2/dags/api_hello/dagRuns"))
            .bearer_auth(&token)
            .json(&json!({"dag_run_id": "via_api", "conf": {"name": "sluice"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, run) = get(
                &format!("{base}/api/v2/dags/api_hello/dagRuns/via_api"),
                Some(&token),
            )
            .await;
            if run["state"] == "success" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "run never succeeded: {run}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, x) = get(
            &format!("{base}/api/v2/dags/api_hello/dagRuns/via_api/taskInstances/hello/xcomEntries/return_value"),
            Some(&token),
        )
        .await;
        assert_eq!(x["value"], json!({"greeting": "sluice"}), "{x}");
    });

    // A second start finds the user: no new password, none printed.
    daemon.kill9();
    let port2 = free_port().to_string();
    let args2 = ["standalone", "--port", port2.as_str()];
    let mut again = sb.spawn(&args2);
    again.wait_ready();
    wait_until(
        "the API of the second start",
        Duration::from_secs(20),
        &[&again],
        || {
            let out = daemon_stdout(&sb, &args2, 2);
            if out.contains("REST API listening") {
                Ok(())
            } else {
                Err(out)
            }
        },
    );
    assert!(!daemon_stdout(&sb, &args2, 2).contains("Login with"));
    // The database holds a hash, never the password.
    let db = std::fs::read(sb.path().join("sluice.db")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&db).contains(&password));
}

#[test]
fn users_create_and_web_serve_with_basic_auth_and_roles() {
    let _guard = serial();
    let sb = Sandbox::new();
    sb.write_dag("api_hello.toml", DAG);
    sb.ok(&["db", "migrate"]);
    let out = sb.ok(&[
        "users",
        "create",
        "--username",
        "ops",
        "--password",
        "ops-password",
        "--role",
        "admin",
    ]);
    assert!(
        out.stdout.contains("User ops created with role admin"),
        "{}",
        out.describe()
    );
    sb.ok(&[
        "users",
        "create",
        "--username",
        "look",
        "--password",
        "look-password",
        "--role",
        "viewer",
    ]);
    let dup = sb.run(&[
        "users",
        "create",
        "--username",
        "ops",
        "--password",
        "other-password",
    ]);
    assert!(
        !dup.success() && dup.stderr.contains("exists"),
        "{}",
        dup.describe()
    );
    let short = sb.run(&["users", "create", "--username", "x", "--password", "short"]);
    assert!(
        !short.success() && short.stderr.contains("8 characters"),
        "{}",
        short.describe()
    );
    sb.ok(&["dags", "unpause", "api_hello"]);

    let mut sb = sb;
    let port = free_port();
    sb.set_env("SLUICE_WEB_PORT", &port.to_string());
    let daemon = sb.spawn(&["web"]);
    let base = format!("http://127.0.0.1:{port}");
    block_on(async {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while get(&format!("{base}/api/v2/monitor/health"), None).await.0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                daemon.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = client()
            .get(format!("{base}/api/v2/dags/api_hello"))
            .basic_auth("look", Some("look-password"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = client()
            .post(format!("{base}/api/v2/dags/api_hello/dagRuns"))
            .basic_auth("look", Some("look-password"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403);
        let r = client()
            .post(format!("{base}/api/v2/dags/api_hello/dagRuns"))
            .basic_auth("ops", Some("ops-password"))
            .json(&json!({"dag_run_id": "queued_only"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let run: Value = r.json().await.unwrap();
        assert_eq!(
            run["state"], "queued",
            "`sluice web` schedules nothing: {run}"
        );
    });
}
