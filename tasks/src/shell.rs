//! `shell`: runs a command with `bash -c`, like Airflow's BashOperator.
//!
//! Keys: `command` (required), `env` (table; added to the inherited environment), `cwd`.
//! stdout and stderr go line by line to the try's log; the last non-empty stdout line is
//! the XCom value, parsed as JSON when it is JSON. A non-zero exit fails the try.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{Map, Value};
use sluice_core::KindKeys;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::{opt_str, short, TaskContext, TaskError, TaskKind};

/// How long a cancelled command gets after SIGTERM before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Lines of stderr kept for the failure message.
const STDERR_TAIL: usize = 5;

pub struct Shell;

#[async_trait::async_trait]
impl TaskKind for Shell {
    fn name(&self) -> &'static str {
        "shell"
    }

    fn keys(&self) -> KindKeys {
        KindKeys {
            allowed: &["command", "env", "cwd"],
            required: &["command"],
        }
    }

    async fn run(&self, ctx: &TaskContext, args: Map<String, Value>) -> Result<Value, TaskError> {
        let command = opt_str(&args, "command")?
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| TaskError::Fatal("`command` must be a non-empty string".into()))?;
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout stops the command's children too.
            .process_group(0)
            .kill_on_drop(true)
            .env("SLUICE_DAG_ID", &ctx.dag_id)
            .env("SLUICE_RUN_ID", &ctx.run_id)
            .env("SLUICE_TASK_ID", &ctx.task_id)
            .env("SLUICE_TRY_NUMBER", ctx.try_number.to_string())
            .env("SLUICE_MAP_INDEX", ctx.map_index.to_string());
        match args.get("env") {
            None | Some(Value::Null) => {}
            Some(Value::Object(env)) => {
                for (k, v) in env {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    cmd.env(k, v);
                }
            }
            Some(other) => {
                return Err(TaskError::Fatal(format!(
                    "`env` must be a table of names to values, got {}",
                    short(other)
                )))
            }
        }
        if let Some(cwd) = opt_str(&args, "cwd")? {
            if !std::path::Path::new(cwd).is_dir() {
                return Err(TaskError::Fatal(format!("`cwd` {cwd} is not a directory")));
            }
            cmd.current_dir(cwd);
        }
        ctx.log.info(&format!("running: bash -c {command:?}"));
        let mut child = cmd
            .spawn()
            .map_err(|e| TaskError::Failed(format!("cannot start bash: {e}")))?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log_out = ctx.log.clone();
        let out_task = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut last = None;
            while let Ok(Some(line)) = lines.next_line().await {
                log_out.line("INFO", "stdout", &line);
                if !line.trim().is_empty() {
                    last = Some(line);
                }
            }
            last
        });
        let log_err = ctx.log.clone();
        let err_task = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut tail = std::collections::VecDeque::new();
            while let Ok(Some(line)) = lines.next_line().await {
                log_err.line("WARN", "stderr", &line);
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            tail.into_iter().collect::<Vec<_>>()
        });
        let status = tokio::select! {
            status = child.wait() => status.map_err(|e| TaskError::Failed(format!("waiting for the command: {e}")))?,
            _ = ctx.cancel.cancelled() => {
                stop_group(pid, &mut child, ctx).await;
                return Err(TaskError::Cancelled);
            }
        };
        let last = out_task.await.unwrap_or_default();
        let stderr_tail = err_task.await.unwrap_or_default();
        if !status.success() {
            let how = match status.code() {
                Some(127) => "exited with code 127 (command not found)".to_string(),
                Some(code) => format!("exited with code {code}"),
                None => {
                    use std::os::unix::process::ExitStatusExt;
                    format!(
                        "was killed by signal {}",
                        status
                            .signal()
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "?".into())
                    )
                }
            };
            let mut msg = format!("command {how}");
            if !stderr_tail.is_empty() {
                msg.push_str(": ");
                msg.push_str(&stderr_tail.join(" | "));
            }
            return Err(TaskError::Failed(msg));
        }
        ctx.log.info("command exited with code 0");
        Ok(match last {
            None => Value::Null,
            Some(line) => serde_json::from_str(line.trim()).unwrap_or(Value::String(line)),
        })
    }
}

/// SIGTERM to the command's process group, then SIGKILL if it is still there after a
/// grace period.
async fn stop_group(pid: Option<u32>, child: &mut tokio::process::Child, ctx: &TaskContext) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    ctx.log.warn("stopping the command (SIGTERM)");
    let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        ctx.log.warn("the command ignored SIGTERM; sending SIGKILL");
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TryLog;

    fn ctx(log: TryLog) -> TaskContext {
        TaskContext {
            log,
            ..TaskContext::detached("d", "t")
        }
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[tokio::test]
    async fn last_stdout_line_is_json_xcom() {
        let out = Shell
            .run(
                &ctx(TryLog::discard()),
                args(serde_json::json!({"command": "echo hello; echo '{\"n\": 3}'"})),
            )
            .await
            .expect("runs");
        assert_eq!(out, serde_json::json!({"n": 3}));
    }

    #[tokio::test]
    async fn non_json_last_line_is_a_string_and_env_cwd_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Shell
            .run(
                &ctx(TryLog::discard()),
                args(serde_json::json!({
                    "command": "echo \"$GREETING from $(basename $PWD) $SLUICE_TASK_ID\"",
                    "env": {"GREETING": "hi"},
                    "cwd": dir.path().to_str().expect("utf8"),
                })),
            )
            .await
            .expect("runs");
        let base = dir
            .path()
            .file_name()
            .expect("name")
            .to_str()
            .expect("utf8");
        assert_eq!(out, Value::String(format!("hi from {base} t")));
    }

    #[tokio::test]
    async fn failure_names_exit_code_and_stderr_and_logs_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = TryLog::open(&dir.path().join("a/attempt=1.log")).expect("log");
        let err = Shell
            .run(
                &ctx(log),
                args(serde_json::json!({"command": "echo out; echo bad thing >&2; exit 3"})),
            )
            .await
            .expect_err("fails");
        assert!(
            matches!(&err, TaskError::Failed(m) if m.contains("code 3") && m.contains("bad thing")),
            "{err}"
        );
        let text =
            std::fs::read_to_string(dir.path().join("a/attempt=1.log")).expect("log written");
        assert!(text.contains("stdout: out"), "{text}");
        assert!(text.contains("stderr: bad thing"), "{text}");
    }

    #[tokio::test]
    async fn missing_command_says_not_found() {
        let err = Shell
            .run(
                &ctx(TryLog::discard()),
                args(serde_json::json!({"command": "definitely-not-a-command-xyz"})),
            )
            .await
            .expect_err("fails");
        let msg = err.to_string();
        assert!(msg.contains("127") && msg.contains("not found"), "{msg}");
    }

    #[tokio::test]
    async fn cancel_kills_the_process_group() {
        let c = ctx(TryLog::discard());
        let cancel = c.cancel.clone();
        let started = std::time::Instant::now();
        let run = tokio::spawn(async move {
            Shell
                .run(
                    &c,
                    args(serde_json::json!({"command": "sleep 30 & sleep 30; wait"})),
                )
                .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.cancel();
        let res = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("stops within the grace period")
            .expect("joins");
        assert!(matches!(res, Err(TaskError::Cancelled)));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn bad_arguments_are_fatal() {
        let err = Shell
            .run(
                &ctx(TryLog::discard()),
                args(serde_json::json!({"command": "true", "env": 3})),
            )
            .await
            .expect_err("fails");
        assert!(matches!(err, TaskError::Fatal(_)));
    }
}
