//! GitHub feedback: commit statuses for each run.

mod status;

pub use status::{CommitState, StatusClient, StatusError};
