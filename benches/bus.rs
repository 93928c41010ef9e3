//! The model bus under faults and load (issue 6); see BENCHMARKS.md.

fn main() {}
