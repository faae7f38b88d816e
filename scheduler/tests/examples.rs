//! The example DAGs shipped in `dags/` validate and run, as the README promises.

mod common;

use std::path::PathBuf;

use common::Sandbox;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A sandbox whose DAG folder is the repository's `dags/`.
fn sandbox() -> Sandbox {
    let mut sb = Sandbox::new();
    let dags = repo_root().join("dags");
    sb.set_env("SLUICE_DAGS_FOLDER", dags.to_str().expect("utf-8 path"));
    sb
}

fn sluice(sb: &Sandbox, args: &[&str]) -> std::process::Output {
    sb.command(args).output().expect("run sluice")
}

#[test]
fn shipped_dags_validate() {
    let home = sandbox();
    let out = sluice(&home, &["dags", "validate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dags/ must validate:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("9 DAG(s) valid"), "{stdout}");
}

#[test]
fn example_etl_passes_xcom_between_tasks() {
    let home = sandbox();
    let out = sluice(
        &home,
        &[
            "dags",
            "test",
            "example_etl",
            "--json",
            "--conf",
            r#"{"rows": 5}"#,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["state"], "success");
    let tis = v["task_instances"].as_array().expect("array");
    assert_eq!(tis.len(), 4);
    assert!(tis.iter().all(|t| t["state"] == "success"), "{v}");
    // `tasks test` renders templates (conf overrides params) and prints the XCom.
    let out = sluice(
        &home,
        &[
            "tasks",
            "test",
            "example_etl",
            "extract",
            "--conf",
            r#"{"rows": 7}"#,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("extracting 7 rows"), "{stdout}");
    assert!(
        stdout.contains(r#"XCom value: {"rows":7,"values":[3,1,2]}"#),
        "{stdout}"
    );
    // It records nothing: no store was needed beyond reading variables.
    let out = sluice(&home, &["tasks", "test", "example_etl", "transform"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "transform reads an XCom that tasks test has not got"
    );
    assert!(stderr.contains("xcom.extract does not exist"), "{stderr}");
}

#[test]
fn example_trigger_rules_runs_failure_paths() {
    let home = sandbox();
    let out = sluice(&home, &["dags", "test", "example_trigger_rules", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let state = |task: &str| {
        v["task_instances"]
            .as_array()
            .expect("array")
            .iter()
            .find(|t| t["task_id"] == task)
            .map(|t| (t["state"].clone(), t["try_number"].clone()))
            .expect("task present")
    };
    assert_eq!(state("flaky"), ("success".into(), 2.into()));
    assert_eq!(state("broken").0, "failed");
    assert_eq!(state("needs_broken").0, "upstream_failed");
    assert_eq!(state("on_failure").0, "success");
    assert_eq!(state("always_report").0, "success");
    // Its only leaf succeeded, so the run did.
    assert_eq!(v["state"], "success");
    assert!(out.status.success());
}
