//! Workflow files: the model, parsing with file:line:col errors, interpolation, the map input
//! pipeline.

pub mod model;

pub use model::*;
