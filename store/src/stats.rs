//! Counts read at metrics scrape time. Each query reads only active rows through the
//! partial indexes the hot path already keeps (`ti_runnable`, `ti_active`,
//! `dag_run_active`), so a scrape costs the same however long the history grows.

use crate::{with_pool, Result, Store};

/// Active rows by state, as a scrape sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActiveCounts {
    /// (state, count) of task instances in scheduled, up_for_retry, queued or running.
    pub task_instances: Vec<(String, i64)>,
    /// (dag_id, state, count) of DAG runs that are queued or running.
    pub dag_runs: Vec<(String, String, i64)>,
}

impl Store {
    /// Task instances waiting or running and DAG runs queued or running.
    pub async fn active_counts(&self) -> Result<ActiveCounts> {
        // Each half of the UNION has exactly one partial index's predicate, so neither
        // scans finished rows.
        let tis: Vec<(String, i64)> = with_pool!(&self.db, pool => {
            sqlx::query_as(
                "SELECT state, COUNT(*) FROM task_instance \
                 WHERE state IN ('scheduled', 'up_for_retry') GROUP BY state \
                 UNION ALL \
                 SELECT state, COUNT(*) FROM task_instance \
                 WHERE state IN ('queued', 'running') GROUP BY state",
            )
            .fetch_all(pool)
            .await?
        });
        let runs: Vec<(String, String, i64)> = with_pool!(&self.db, pool => {
            sqlx::query_as(
                "SELECT dag_id, state, COUNT(*) FROM dag_run \
                 WHERE state IN ('queued', 'running') GROUP BY dag_id, state",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(ActiveCounts {
            task_instances: tis,
            dag_runs: runs,
        })
    }
}
