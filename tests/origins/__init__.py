"""Local origin servers that stand in for crates.io and static.rust-lang.org in tests and benchmarks."""
