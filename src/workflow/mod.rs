//! Workflow files: the model, parsing with file:line:col errors, interpolation, the map input
//! pipeline.

pub mod expr;
pub mod input;
pub mod interpolate;
pub mod model;
pub mod parse;
mod yaml;

pub use expr::eval_condition;
pub use input::{InputError, apply_pipeline, item_key, load_items, load_items_in};
pub use interpolate::{
    Context, InterpolateError, Placeholder, ShellScript, check_workflow, placeholders,
    render_content, render_shell, render_text,
};
pub use model::*;
pub use parse::{Parsed, WorkflowError, load, parse};
