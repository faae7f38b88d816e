//! Task-instance and DAG-run states, and the trigger-rule decision — the pure part of
//! the state machine, kept apart from SQL so it can be tested exhaustively.

use serde::{Deserialize, Serialize};
use sluice_core::TriggerRule;

/// Task-instance states, as Airflow names them. A task instance with no state yet
/// (Airflow's "none") is `Option::None` / SQL NULL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TiState {
    Scheduled,
    Queued,
    Running,
    Success,
    Failed,
    UpForRetry,
    UpstreamFailed,
    Skipped,
    Removed,
}

impl TiState {
    pub const ALL: [TiState; 9] = [
        TiState::Scheduled,
        TiState::Queued,
        TiState::Running,
        TiState::Success,
        TiState::Failed,
        TiState::UpForRetry,
        TiState::UpstreamFailed,
        TiState::Skipped,
        TiState::Removed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TiState::Scheduled => "scheduled",
            TiState::Queued => "queued",
            TiState::Running => "running",
            TiState::Success => "success",
            TiState::Failed => "failed",
            TiState::UpForRetry => "up_for_retry",
            TiState::UpstreamFailed => "upstream_failed",
            TiState::Skipped => "skipped",
            TiState::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<TiState> {
        TiState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A finished task instance never changes state again unless cleared.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TiState::Success
                | TiState::Failed
                | TiState::UpstreamFailed
                | TiState::Skipped
                | TiState::Removed
        )
    }
}

impl std::fmt::Display for TiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Created, waiting for a slot under the DAG's max_active_runs.
    Queued,
    Running,
    Success,
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Success => "success",
            RunState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<RunState> {
        [
            RunState::Queued,
            RunState::Running,
            RunState::Success,
            RunState::Failed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many direct upstream task instances are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamCounts {
    pub total: u64,
    pub success: u64,
    pub failed: u64,
    pub upstream_failed: u64,
    pub skipped: u64,
    /// Removed upstreams count as done and are otherwise ignored, as in Airflow.
    pub removed: u64,
}

impl UpstreamCounts {
    pub fn add(&mut self, state: Option<TiState>, n: u64) {
        self.total += n;
        match state {
            Some(TiState::Success) => self.success += n,
            Some(TiState::Failed) => self.failed += n,
            Some(TiState::UpstreamFailed) => self.upstream_failed += n,
            Some(TiState::Skipped) => self.skipped += n,
            Some(TiState::Removed) => self.removed += n,
            _ => {}
        }
    }

    fn done(&self) -> u64 {
        self.success + self.failed + self.upstream_failed + self.skipped + self.removed
    }

    fn all_done(&self) -> bool {
        self.done() == self.total
    }

    fn failures(&self) -> u64 {
        self.failed + self.upstream_failed
    }
}

/// What to do with a not-yet-decided task instance given its upstreams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not decidable yet: some upstream is still unfinished.
    Wait,
    Run,
    Skip,
    UpstreamFailed,
}

impl Decision {
    pub fn state(self) -> Option<TiState> {
        match self {
            Decision::Wait => None,
            Decision::Run => Some(TiState::Scheduled),
            Decision::Skip => Some(TiState::Skipped),
            Decision::UpstreamFailed => Some(TiState::UpstreamFailed),
        }
    }
}

/// Airflow's trigger rules. A task with no upstream always runs.
pub fn decide(rule: TriggerRule, up: &UpstreamCounts) -> Decision {
    if up.total == 0 {
        return Decision::Run;
    }
    match rule {
        TriggerRule::Always => Decision::Run,
        TriggerRule::AllSuccess => {
            if up.failures() > 0 {
                Decision::UpstreamFailed
            } else if up.skipped > 0 {
                Decision::Skip
            } else if up.all_done() {
                Decision::Run
            } else {
                Decision::Wait
            }
        }
        TriggerRule::AllFailed => {
            if up.success + up.skipped > 0 {
                Decision::Skip
            } else if up.all_done() {
                Decision::Run
            } else {
                Decision::Wait
            }
        }
        TriggerRule::AllDone => {
            if up.all_done() {
                Decision::Run
            } else {
                Decision::Wait
            }
        }
        TriggerRule::OneSuccess => {
            if up.success > 0 {
                Decision::Run
            } else if !up.all_done() {
                Decision::Wait
            } else if up.failures() > 0 {
                Decision::UpstreamFailed
            } else {
                Decision::Skip
            }
        }
        TriggerRule::OneFailed => {
            if up.failures() > 0 {
                Decision::Run
            } else if up.all_done() {
                Decision::Skip
            } else {
                Decision::Wait
            }
        }
        TriggerRule::NoneFailed => {
            if up.failures() > 0 {
                Decision::UpstreamFailed
            } else if up.all_done() {
                Decision::Run
            } else {
                Decision::Wait
            }
        }
        TriggerRule::NoneFailedMinOneSuccess => {
            if up.failures() > 0 {
                Decision::UpstreamFailed
            } else if !up.all_done() {
                Decision::Wait
            } else if up.success > 0 {
                Decision::Run
            } else {
                Decision::Skip
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(states: &[Option<TiState>]) -> UpstreamCounts {
        let mut c = UpstreamCounts::default();
        for s in states {
            c.add(*s, 1);
        }
        c
    }

    const S: Option<TiState> = Some(TiState::Success);
    const F: Option<TiState> = Some(TiState::Failed);
    const UF: Option<TiState> = Some(TiState::UpstreamFailed);
    const SK: Option<TiState> = Some(TiState::Skipped);
    const R: Option<TiState> = Some(TiState::Running);
    const N: Option<TiState> = None;

    #[test]
    fn all_success() {
        use Decision::*;
        let r = TriggerRule::AllSuccess;
        assert_eq!(decide(r, &counts(&[S, S])), Run);
        assert_eq!(decide(r, &counts(&[S, R])), Wait);
        assert_eq!(decide(r, &counts(&[F, R])), UpstreamFailed);
        assert_eq!(decide(r, &counts(&[UF, S])), UpstreamFailed);
        assert_eq!(decide(r, &counts(&[SK, S])), Skip);
        assert_eq!(decide(r, &counts(&[])), Run);
    }

    #[test]
    fn all_failed_and_all_done() {
        use Decision::*;
        assert_eq!(decide(TriggerRule::AllFailed, &counts(&[F, UF])), Run);
        assert_eq!(decide(TriggerRule::AllFailed, &counts(&[F, N])), Wait);
        assert_eq!(decide(TriggerRule::AllFailed, &counts(&[F, S])), Skip);
        assert_eq!(decide(TriggerRule::AllDone, &counts(&[F, S, SK, UF])), Run);
        assert_eq!(decide(TriggerRule::AllDone, &counts(&[F, R])), Wait);
    }

    #[test]
    fn one_success_and_one_failed() {
        use Decision::*;
        assert_eq!(decide(TriggerRule::OneSuccess, &counts(&[S, R])), Run);
        assert_eq!(decide(TriggerRule::OneSuccess, &counts(&[F, R])), Wait);
        assert_eq!(
            decide(TriggerRule::OneSuccess, &counts(&[F, SK])),
            UpstreamFailed
        );
        assert_eq!(decide(TriggerRule::OneSuccess, &counts(&[SK, SK])), Skip);
        assert_eq!(decide(TriggerRule::OneFailed, &counts(&[F, R])), Run);
        assert_eq!(decide(TriggerRule::OneFailed, &counts(&[UF, N])), Run);
        assert_eq!(decide(TriggerRule::OneFailed, &counts(&[S, SK])), Skip);
        assert_eq!(decide(TriggerRule::OneFailed, &counts(&[S, R])), Wait);
    }

    #[test]
    fn none_failed_variants() {
        use Decision::*;
        assert_eq!(decide(TriggerRule::NoneFailed, &counts(&[S, SK])), Run);
        assert_eq!(decide(TriggerRule::NoneFailed, &counts(&[S, R])), Wait);
        assert_eq!(
            decide(TriggerRule::NoneFailed, &counts(&[F, R])),
            UpstreamFailed
        );
        let r = TriggerRule::NoneFailedMinOneSuccess;
        assert_eq!(decide(r, &counts(&[S, SK])), Run);
        assert_eq!(decide(r, &counts(&[SK, SK])), Skip);
        assert_eq!(decide(r, &counts(&[UF, S])), UpstreamFailed);
        assert_eq!(decide(r, &counts(&[SK, R])), Wait);
    }

    #[test]
    fn always_runs() {
        assert_eq!(decide(TriggerRule::Always, &counts(&[R, N])), Decision::Run);
    }

    #[test]
    fn states_round_trip() {
        for s in TiState::ALL {
            assert_eq!(TiState::parse(s.as_str()), Some(s));
        }
        assert_eq!(TiState::parse("bogus"), None);
    }
}
