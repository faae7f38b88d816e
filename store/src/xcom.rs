//! XCom: the JSON value each task returns, read by downstream templates.

use crate::exec::XcomValue;
use crate::{with_pool, Result, Store};

/// task_id, map_index, key, value, artifact_path, size_bytes
type XcomTuple = (String, i64, String, Option<String>, Option<String>, i64);

#[derive(Clone, Debug)]
pub struct XcomRow {
    pub task_id: String,
    pub map_index: i64,
    pub key: String,
    pub value: XcomValue,
}

impl Store {
    /// XCom values of a run, optionally only those of `task_ids`.
    pub async fn xcoms(&self, run_pk: i64, task_ids: Option<&[String]>) -> Result<Vec<XcomRow>> {
        let filter = match task_ids {
            Some(_) => format!("AND task_id {}", self.dialect.in_text_list(2)),
            None => String::new(),
        };
        let q = format!(
            "SELECT task_id, map_index, key, value, artifact_path, size_bytes FROM xcom \
             WHERE dag_run_id = $1 {filter} ORDER BY task_id, map_index"
        );
        let list = crate::sql::json_list(task_ids.unwrap_or(&[]));
        let rows: Vec<XcomTuple> = with_pool!(&self.db, pool => {
            let mut query = sqlx::query_as(&q).bind(run_pk);
            if task_ids.is_some() {
                query = query.bind(&list);
            }
            query.fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(task_id, map_index, key, value, artifact, size)| XcomRow {
                task_id,
                map_index,
                key,
                value: match (value, artifact) {
                    (Some(v), _) => XcomValue::Inline(v),
                    (None, Some(path)) => XcomValue::Artifact { path, size },
                    (None, None) => XcomValue::Inline("null".into()),
                },
            })
            .collect())
    }
}
