//! The helper's pieces, as a library so the fuzz targets can reach the conf checker; the binary
//! is `main.rs`. Read SECURITY.md for the order to review them in.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod actions;
pub mod checker;
pub mod command;
pub mod log;
pub mod policy;
pub mod server;
