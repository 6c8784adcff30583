//! Harnesses for tests that run real services. Used only as a dev-dependency.
//!
//! A test that needs something this machine lacks calls [`prereq::require`]: under `CI=true` that
//! fails the test loudly; elsewhere it prints why and the test returns early.

pub mod git;
pub mod netns;
pub mod nginx;
pub mod nginx_tree;
pub mod pebble;
pub mod prereq;
pub mod privhelper;
pub mod services;
