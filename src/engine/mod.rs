pub mod classify;
pub mod plan;
pub mod process;
