//! The desired-state loader and validator: see `mirrorctl::fuzzing::check_load`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mirrorctl::fuzzing::check_load(data));
