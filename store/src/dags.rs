//! DAGs, their versions, import errors, variables and pools.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_core::{Dag, Diagnostic, Schedule};
use sqlx::Row;

use crate::models::{DagRow, ImportErrorRow, PoolRow, VariableRow};
use crate::{now, with_pool, BeginWrite, Result, Store, StoreError};

/// How a DAG's schedule is shown in lists.
pub fn schedule_label(schedule: &Schedule) -> String {
    match schedule {
        Schedule::None => "None".to_string(),
        Schedule::Cron { expr } => expr.clone(),
        Schedule::Every { every_ms } => format!("every {}", humantime_ms(*every_ms)),
        Schedule::Once => "@once".to_string(),
    }
}

fn humantime_ms(ms: u64) -> String {
    let secs = ms / 1000;
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

const DAG_COLUMNS: &str = "dag_id, is_paused, is_active, fileloc, latest_version_id, description, \
     schedule, timezone, tags, max_active_runs, updated_at";

impl Store {
    /// Records a parsed DAG: creates its row on first sight (paused or not as
    /// `paused_at_creation` says, unless the file says otherwise), and a new version when
    /// the file's content changed. Returns the id of the DAG's current version.
    pub async fn sync_dag(&self, dag: &Dag, paused_at_creation: bool) -> Result<i64> {
        let ts = now();
        let definition = serde_json::to_string(dag).map_err(|e| {
            StoreError::Invalid(format!("cannot serialise DAG {}: {e}", dag.dag_id))
        })?;
        let paused = dag.is_paused_upon_creation.unwrap_or(paused_at_creation);
        let tags = serde_json::to_string(&dag.tags).unwrap_or_else(|_| "[]".into());
        let schedule = schedule_label(&dag.schedule);
        let lock = self.dialect.for_update();
        let version_id = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO dag (dag_id, is_paused, is_active, fileloc, description, schedule, \
                 timezone, tags, max_active_runs, updated_at) \
                 VALUES ($1, $2, TRUE, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (dag_id) DO UPDATE SET is_active = TRUE, fileloc = $3, \
                 description = $4, schedule = $5, timezone = $6, tags = $7, \
                 max_active_runs = $8, updated_at = $9",
            )
            .bind(&dag.dag_id)
            .bind(paused)
            .bind(&dag.fileloc)
            .bind(&dag.description)
            .bind(&schedule)
            .bind(dag.timezone.name())
            .bind(&tags)
            .bind(i64::from(dag.max_active_runs))
            .bind(ts)
            .execute(&mut *tx)
            .await?;
            // Serialise version numbering per DAG.
            sqlx::query(&format!("SELECT dag_id FROM dag WHERE dag_id = $1{lock}"))
                .bind(&dag.dag_id)
                .execute(&mut *tx)
                .await?;
            let existing: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM dag_version WHERE dag_id = $1 AND source_hash = $2",
            )
            .bind(&dag.dag_id)
            .bind(&dag.source_hash)
            .fetch_optional(&mut *tx)
            .await?;
            let id = match existing {
                Some(id) => id,
                None => {
                    let next: i64 = sqlx::query_scalar(
                        "SELECT COALESCE(MAX(version_number), 0) + 1 FROM dag_version WHERE dag_id = $1",
                    )
                    .bind(&dag.dag_id)
                    .fetch_one(&mut *tx)
                    .await?;
                    sqlx::query_scalar(
                        "INSERT INTO dag_version (dag_id, version_number, source_hash, definition, created_at) \
                         VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    )
                    .bind(&dag.dag_id)
                    .bind(next)
                    .bind(&dag.source_hash)
                    .bind(&definition)
                    .bind(ts)
                    .fetch_one(&mut *tx)
                    .await?
                }
            };
            sqlx::query("UPDATE dag SET latest_version_id = $2 WHERE dag_id = $1")
                .bind(&dag.dag_id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            id
        });
        Ok(version_id)
    }

    /// Marks as inactive (never scheduled, history kept) the DAGs that are neither in
    /// `present` nor defined in one of `broken_files` — a file that fails to parse keeps
    /// its DAG running on the last good version.
    pub async fn deactivate_missing(
        &self,
        present: &[String],
        broken_files: &[String],
    ) -> Result<u64> {
        let q = format!(
            "UPDATE dag SET is_active = FALSE, updated_at = $3 WHERE is_active AND NOT (dag_id {}) \
             AND NOT (fileloc {})",
            self.dialect.in_text_list(1),
            self.dialect.in_text_list(2)
        );
        let present = crate::sql::json_list(present);
        let broken = crate::sql::json_list(broken_files);
        let n = with_pool!(&self.db, pool => {
            sqlx::query(&q).bind(&present).bind(&broken).bind(now()).execute(pool).await?.rows_affected()
        });
        Ok(n)
    }

    /// Replaces the stored import errors with `errors` (file → its problems).
    pub async fn set_import_errors(
        &self,
        errors: &BTreeMap<String, Vec<Diagnostic>>,
    ) -> Result<()> {
        let ts = now();
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("DELETE FROM import_error").execute(&mut *tx).await?;
            for (file, diags) in errors {
                let json = serde_json::to_string(diags).unwrap_or_else(|_| "[]".into());
                sqlx::query("INSERT INTO import_error (fileloc, errors, updated_at) VALUES ($1, $2, $3)")
                    .bind(file)
                    .bind(json)
                    .bind(ts)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn import_errors(&self) -> Result<Vec<ImportErrorRow>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, ImportErrorRow>(
                "SELECT fileloc, errors, updated_at FROM import_error ORDER BY fileloc",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn dags(&self) -> Result<Vec<DagRow>> {
        let q = format!("SELECT {DAG_COLUMNS} FROM dag ORDER BY dag_id");
        Ok(with_pool!(&self.db, pool => sqlx::query_as::<_, DagRow>(&q).fetch_all(pool).await?))
    }

    pub async fn dag(&self, dag_id: &str) -> Result<Option<DagRow>> {
        let q = format!("SELECT {DAG_COLUMNS} FROM dag WHERE dag_id = $1");
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, DagRow>(&q).bind(dag_id).fetch_optional(pool).await?
        }))
    }

    /// Pauses or unpauses; returns false when the DAG is unknown to the store.
    pub async fn set_paused(&self, dag_id: &str, paused: bool, actor: &str) -> Result<bool> {
        let n = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query("UPDATE dag SET is_paused = $2, updated_at = $3 WHERE dag_id = $1")
                .bind(dag_id)
                .bind(paused)
                .bind(now())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                sqlx::query("INSERT INTO audit_log (at, event, dag_id, actor) VALUES ($1, $2, $3, $4)")
                    .bind(now())
                    .bind(if paused { "pause" } else { "unpause" })
                    .bind(dag_id)
                    .bind(actor)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            n
        });
        Ok(n > 0)
    }

    /// A DAG version, from the cache or the store.
    pub async fn dag_version(&self, id: i64) -> Result<Arc<Dag>> {
        if let Some(dag) = self
            .versions
            .read()
            .expect("version cache poisoned")
            .get(&id)
        {
            return Ok(dag.clone());
        }
        let definition: Option<String> = with_pool!(&self.db, pool => {
            sqlx::query_scalar("SELECT definition FROM dag_version WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        let definition = definition.ok_or_else(|| StoreError::NotFound {
            what: format!("DAG version {id}"),
        })?;
        let dag: Dag = serde_json::from_str(&definition).map_err(|e| StoreError::BadVersion {
            id,
            reason: e.to_string(),
        })?;
        let dag = Arc::new(dag);
        self.versions
            .write()
            .expect("version cache poisoned")
            .insert(id, dag.clone());
        Ok(dag)
    }

    /// The current version of a DAG, if the store has one.
    pub async fn latest_dag(&self, dag_id: &str) -> Result<Option<(i64, Arc<Dag>)>> {
        match self.dag(dag_id).await?.and_then(|d| d.latest_version_id) {
            Some(id) => Ok(Some((id, self.dag_version(id).await?))),
            None => Ok(None),
        }
    }

    pub async fn variables(&self) -> Result<Vec<VariableRow>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, VariableRow>("SELECT key, value, description FROM variable ORDER BY key")
                .fetch_all(pool)
                .await?
        }))
    }

    pub async fn set_variable(
        &self,
        key: &str,
        value: &str,
        description: Option<&str>,
    ) -> Result<()> {
        with_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO variable (key, value, description) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET value = $2, description = COALESCE($3, variable.description)",
            )
            .bind(key)
            .bind(value)
            .bind(description)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn delete_variable(&self, key: &str) -> Result<bool> {
        let n = with_pool!(&self.db, pool => {
            sqlx::query("DELETE FROM variable WHERE key = $1").bind(key).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }

    pub async fn pools(&self) -> Result<Vec<PoolRow>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, PoolRow>("SELECT name, slots, description FROM pool ORDER BY name")
                .fetch_all(pool)
                .await?
        }))
    }

    pub async fn set_pool(&self, name: &str, slots: i64, description: Option<&str>) -> Result<()> {
        if slots < 0 {
            return Err(StoreError::Invalid(format!(
                "pool {name}: slots must be >= 0, got {slots}"
            )));
        }
        with_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO pool (name, slots, description) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET slots = $2, description = COALESCE($3, pool.description)",
            )
            .bind(name)
            .bind(slots)
            .bind(description)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Latest audit events, newest first.
    pub async fn audit_events(&self, limit: i64) -> Result<Vec<(String, Option<String>, String)>> {
        let rows = with_pool!(&self.db, pool => {
            sqlx::query("SELECT event, dag_id, actor FROM audit_log ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| (r.get::<String, _>(0), r.get::<Option<String>, _>(1), r.get::<String, _>(2)))
                .collect::<Vec<_>>()
        });
        Ok(rows)
    }
}
