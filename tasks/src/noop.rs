//! `noop`: does nothing and succeeds. Joins branches and measures the scheduler itself.

use serde_json::{Map, Value};
use sluice_core::KindKeys;

use crate::{TaskContext, TaskError, TaskKind};

pub struct Noop;

#[async_trait::async_trait]
impl TaskKind for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }

    fn keys(&self) -> KindKeys {
        KindKeys {
            allowed: &[],
            required: &[],
        }
    }

    async fn run(&self, _ctx: &TaskContext, _args: Map<String, Value>) -> Result<Value, TaskError> {
        Ok(Value::Null)
    }
}
