//! Filled by the work that owns this module.
