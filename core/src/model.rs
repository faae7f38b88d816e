//! The in-memory DAG model produced by the loader and stored (as JSON) by the store.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// When a DAG gets scheduled runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Schedule {
    /// Manual (triggered) runs only.
    None,
    /// A 5-field or 6-field (leading seconds) cron expression, evaluated in the DAG timezone.
    Cron { expr: String },
    /// Fixed-length intervals aligned to `start_date`.
    Every { every_ms: u64 },
    /// A single run whose data interval is `[start_date, start_date]`.
    Once,
}

impl Schedule {
    /// Whether the scheduler creates runs on its own (anything but `None`).
    pub fn is_scheduled(&self) -> bool {
        !matches!(self, Schedule::None)
    }
}

/// Airflow's trigger rules: when a task may run given its direct upstreams' states.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TriggerRule {
    AllSuccess,
    AllFailed,
    AllDone,
    OneSuccess,
    OneFailed,
    NoneFailed,
    NoneFailedMinOneSuccess,
    Always,
}

impl TriggerRule {
    pub const ALL: [TriggerRule; 8] = [
        TriggerRule::AllSuccess,
        TriggerRule::AllFailed,
        TriggerRule::AllDone,
        TriggerRule::OneSuccess,
        TriggerRule::OneFailed,
        TriggerRule::NoneFailed,
        TriggerRule::NoneFailedMinOneSuccess,
        TriggerRule::Always,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            TriggerRule::AllSuccess => "all_success",
            TriggerRule::AllFailed => "all_failed",
            TriggerRule::AllDone => "all_done",
            TriggerRule::OneSuccess => "one_success",
            TriggerRule::OneFailed => "one_failed",
            TriggerRule::NoneFailed => "none_failed",
            TriggerRule::NoneFailedMinOneSuccess => "none_failed_min_one_success",
            TriggerRule::Always => "always",
        }
    }

    pub fn parse(s: &str) -> Option<TriggerRule> {
        TriggerRule::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for TriggerRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RetryBackoff {
    Fixed,
    Exponential,
}

impl RetryBackoff {
    pub fn as_str(&self) -> &'static str {
        match self {
            RetryBackoff::Fixed => "fixed",
            RetryBackoff::Exponential => "exponential",
        }
    }
}

pub const DEFAULT_RETRY_DELAY_MS: u64 = 5 * 60 * 1000;
pub const DEFAULT_MAX_RETRY_DELAY_MS: u64 = 60 * 60 * 1000;
pub const DEFAULT_POOL: &str = "default_pool";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RetryPolicy {
    pub retries: u32,
    pub retry_delay_ms: u64,
    pub backoff: RetryBackoff,
    pub max_retry_delay_ms: u64,
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 0,
            retry_delay_ms: DEFAULT_RETRY_DELAY_MS,
            backoff: RetryBackoff::Fixed,
            max_retry_delay_ms: DEFAULT_MAX_RETRY_DELAY_MS,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// Delay before try number `next_try` (2 = first retry).
    ///
    /// Fixed: `retry_delay`, unchanged (jitter and the cap only concern exponential
    /// backoff, as in Airflow). Exponential: `retry_delay * 2^(next_try-2)` capped at
    /// `max_retry_delay`; with jitter the result is scaled by `0.5 + 0.5 * rand01`,
    /// i.e. a factor in [0.5, 1.0].
    pub fn delay_for(&self, next_try: u32, rand01: f64) -> Duration {
        let base = self.retry_delay_ms;
        let ms = match self.backoff {
            RetryBackoff::Fixed => base,
            RetryBackoff::Exponential => {
                // Try 1 is the first attempt, so anything below 2 is treated as the first retry.
                let exp = next_try.saturating_sub(2).min(63);
                let raw = base.saturating_mul(1u64 << exp);
                let capped = raw.min(self.max_retry_delay_ms);
                if self.jitter {
                    let r = if rand01.is_finite() {
                        rand01.clamp(0.0, 1.0)
                    } else {
                        0.0
                    };
                    (capped as f64 * (0.5 + 0.5 * r)).round() as u64
                } else {
                    capped
                }
            }
        };
        Duration::from_millis(ms)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskDef {
    pub task_id: String,
    pub kind: String,
    pub upstream: Vec<String>,
    pub trigger_rule: TriggerRule,
    pub retry: RetryPolicy,
    pub timeout_ms: Option<u64>,
    pub pool: String,
    pub pool_slots: u32,
    pub priority_weight: i64,
    pub doc: Option<String>,
    /// The kind's own keys, after merging `[defaults]`.
    pub args: serde_json::Map<String, serde_json::Value>,
    /// Checkpoint name -> template over `result` (the try's XCom value); proposed
    /// when the try succeeds, committed when its run succeeds.
    #[serde(default)]
    pub checkpoint_update: IndexMap<String, String>,
    /// A template (or literal list) rendering to a list: the task runs once per item,
    /// with `item` in its context (Airflow's dynamic task mapping).
    #[serde(default)]
    pub map_over: Option<serde_json::Value>,
    /// At most this many mapped instances of the task run at once in one run.
    #[serde(default)]
    pub map_concurrency: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Dag {
    pub dag_id: String,
    pub description: Option<String>,
    pub schedule: Schedule,
    pub timezone: chrono_tz::Tz,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub catchup: bool,
    pub max_active_runs: u32,
    pub max_active_tasks: u32,
    pub dagrun_timeout_ms: Option<u64>,
    pub tags: Vec<String>,
    pub params: serde_json::Map<String, serde_json::Value>,
    /// `[checkpoints]`: name -> initial value (cursors that advance with successful runs).
    #[serde(default)]
    pub checkpoints: IndexMap<String, serde_json::Value>,
    pub is_paused_upon_creation: Option<bool>,
    /// In a topological order (upstream before downstream, ties by file order).
    pub tasks: IndexMap<String, TaskDef>,
    /// task_id -> direct downstream task_ids; every task has an entry.
    pub downstream: HashMap<String, Vec<String>>,
    pub fileloc: String,
    pub source_hash: String,
}

impl Dag {
    pub fn task(&self, task_id: &str) -> Option<&TaskDef> {
        self.tasks.get(task_id)
    }

    /// Direct downstream task ids (empty for unknown tasks).
    pub fn downstream_of(&self, task_id: &str) -> &[String] {
        self.downstream
            .get(task_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Tasks with no upstream, in topological order.
    pub fn roots(&self) -> impl Iterator<Item = &TaskDef> {
        self.tasks.values().filter(|t| t.upstream.is_empty())
    }

    /// Tasks with no downstream, in topological order.
    pub fn leaves(&self) -> impl Iterator<Item = &TaskDef> {
        self.tasks
            .values()
            .filter(|t| self.downstream_of(&t.task_id).is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: RetryBackoff, jitter: bool) -> RetryPolicy {
        RetryPolicy {
            retries: 5,
            retry_delay_ms: 10_000,
            backoff,
            max_retry_delay_ms: 60_000,
            jitter,
        }
    }

    #[test]
    fn fixed_delay_ignores_try_and_jitter() {
        let p = policy(RetryBackoff::Fixed, true);
        assert_eq!(p.delay_for(2, 0.0), Duration::from_secs(10));
        assert_eq!(p.delay_for(7, 0.99), Duration::from_secs(10));
    }

    #[test]
    fn exponential_doubles_and_caps() {
        let p = policy(RetryBackoff::Exponential, false);
        assert_eq!(p.delay_for(2, 0.3), Duration::from_secs(10));
        assert_eq!(p.delay_for(3, 0.3), Duration::from_secs(20));
        assert_eq!(p.delay_for(4, 0.3), Duration::from_secs(40));
        assert_eq!(p.delay_for(5, 0.3), Duration::from_secs(60)); // capped
        assert_eq!(p.delay_for(200, 0.3), Duration::from_secs(60)); // no overflow
        assert_eq!(p.delay_for(1, 0.3), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let p = policy(RetryBackoff::Exponential, true);
        for i in 0..100 {
            let r = i as f64 / 100.0;
            let d = p.delay_for(3, r);
            assert!(
                d >= Duration::from_secs(10) && d <= Duration::from_secs(20),
                "{d:?}"
            );
        }
        assert_eq!(p.delay_for(3, 0.0), Duration::from_secs(10));
        assert_eq!(p.delay_for(3, 0.5), Duration::from_secs(15));
        // Capped value is jittered too.
        let d = p.delay_for(10, 0.999_999);
        assert!(d <= Duration::from_secs(60) && d >= Duration::from_secs(59));
        // Out-of-range input is clamped rather than producing nonsense.
        assert_eq!(p.delay_for(3, 7.0), Duration::from_secs(20));
        assert_eq!(p.delay_for(3, f64::NAN), Duration::from_secs(10));
    }

    #[test]
    fn trigger_rule_names_round_trip() {
        for r in TriggerRule::ALL {
            assert_eq!(TriggerRule::parse(r.as_str()), Some(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
    }
}
