//! Workflow files: the model, parsing with file:line:col errors, interpolation, the map input
//! pipeline.

pub mod model;
pub mod parse;
mod yaml;

pub use model::*;
pub use parse::{Parsed, WorkflowError, load, parse};
