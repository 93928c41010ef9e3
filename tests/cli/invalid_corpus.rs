//! Table-driven corpus of invalid desired states (tests/invalid/).
