#![no_main]
#![allow(dead_code)] // harness.rs holds every target's body; this one uses one.
include!("harness.rs");
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wire_payload(data);
});
