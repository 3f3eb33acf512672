//! kiln binary
fn main() {}
