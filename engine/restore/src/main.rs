//! torpor-restore: rebuilds a checkpointed process.
fn main() {}
