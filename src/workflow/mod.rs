//! Workflow files: the model, parsing with file:line:col errors (`parse/`), the one expression
//! language of `filter:` and `when:` (`expr/`), `${...}` interpolation (`interpolate/`), the map
//! input pipeline (`input.rs`). Dependencies point one way: parse -> expr -> interpolate.

pub mod expr;
pub mod input;
pub mod interpolate;
pub mod model;
pub mod parse;
mod yaml;

pub use expr::eval_condition;
pub use input::{InputError, apply_pipeline, item_key, load_items, load_items_in};
pub use interpolate::{
    Context, Finding, InterpolateError, ItemSample, Placeholder, ShellScript, check_workflow,
    placeholders, render_content, render_shell, render_text,
};
pub use model::*;
pub use parse::{Parsed, WorkflowError, load, parse};
