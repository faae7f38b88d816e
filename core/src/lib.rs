//! Sluice core: the DAG model, the TOML loader and its validation, timetables
//! (when runs are due) and the template engine shared by the other crates.

pub mod loader;
pub mod model;
pub mod template;
pub mod timetable;

mod backoff;
mod util;

pub use backoff::backoff;
pub use loader::{
    load_file, load_folder, parse_dag, Diagnostic, FolderLoad, KindKeys, KindRegistry,
};
pub use model::{Dag, RetryBackoff, RetryPolicy, Schedule, TaskDef, TriggerRule};
pub use template::{RecordTemplate, RenderError, TemplateSyntaxError, Templates, CONTEXT_NAMES};
pub use timetable::DataInterval;
