//! Placeholder: filled by the protocol work (issue 2).
