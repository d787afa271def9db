//! Layer framings (`tarsplit`) from arbitrary bytes, against a tampered
//! tree: may fail, must not panic, must never verify (see the harness).
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../harness/layer_framing.rs");

fuzz_target!(|input: &[u8]| run(input));
