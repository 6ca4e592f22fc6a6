//! torpor: the command-line tool.
fn main() {}
