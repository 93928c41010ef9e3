//! The model bus's request and answer translation: see `mirrorctl::fuzzing::check_bus_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mirrorctl::fuzzing::check_bus_request(data));
