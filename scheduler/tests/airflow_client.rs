//! Apache Airflow's own Python client (`apache-airflow-client` 3.x, installed by
//! `scripts/airflow_client.sh`) against `sluice standalone`: the API is compatible
//! enough for it to list DAGs, trigger with conf, follow the run, and read task
//! instances, a log and an XCom (the script is `drive_airflow_client.py`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{serial, wait_until, Sandbox};

const DAG: &str = r#"[dag]
id = "client_demo"
schedule = "@daily"
start_date = 2024-01-01
catchup = false
tags = ["client"]
is_paused_upon_creation = true

[tasks.greet]
kind = "shell"
command = "echo 'hello {{ dag_run.conf.who }}'; echo '{\"greeting\": \"hello {{ dag_run.conf.who }}\"}'"

[tasks.after]
kind = "noop"
upstream = ["greet"]
"#;

#[test]
fn airflow_python_client_drives_sluice() {
    let python = std::env::var("SLUICE_AIRFLOW_CLIENT_PYTHON").unwrap_or_else(|_| {
        panic!("SLUICE_AIRFLOW_CLIENT_PYTHON is not set: run eval \"$(scripts/airflow_client.sh)\" first (scripts/test.sh does)")
    });
    let _guard = serial();
    let sb = Sandbox::new();
    sb.write_dag("client_demo.toml", DAG);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
        .to_string();
    let args = ["standalone", "--port", port.as_str()];
    let mut daemon = sb.spawn(&args);
    daemon.wait_ready();
    let stdout = sb.path().join(format!("{}-1.stdout", args.join("_")));
    let password = wait_until(
        "the admin password",
        Duration::from_secs(20),
        &[&daemon],
        || {
            let out = std::fs::read_to_string(&stdout).unwrap_or_default();
            out.lines()
                .find_map(|l| l.strip_prefix("Login with username admin and password "))
                .map(|p| p.trim().to_string())
                .ok_or(out)
        },
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drive_airflow_client.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("SLUICE_API_URL", format!("http://127.0.0.1:{port}"))
        .env("SLUICE_API_USER", "admin")
        .env("SLUICE_API_PASSWORD", &password)
        .output()
        .expect("run the Python client");
    let text = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log_tail(40)
    );
    assert!(out.status.success(), "the Airflow client failed:\n{text}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("airflow client: OK"),
        "{text}"
    );
}
