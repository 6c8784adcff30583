//! Placeholder: filled by the privhelper work (issue 2).
fn main() {}
