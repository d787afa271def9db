//! Compact metadata records (feature `compact-meta`) from arbitrary bytes.
//!
//! The proto decoder: whatever decodes re-encodes to a list that decodes to
//! the same records. The agent: the bytes become the records of a base
//! marker (the first byte is the announced count) on a small held layer;
//! the apply may fail, but must not panic, must leave a store that passes
//! `verify`, and must never change the held layer.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../harness/compact_meta.rs");

fuzz_target!(|input: &[u8]| run(input));
