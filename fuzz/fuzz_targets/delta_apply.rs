//! Binary-delta application (archive feature `file-delta`) on arbitrary
//! patches: `agent::delta::apply` into a scratch store, against an old
//! object made from the input. Byte 0 picks the case: bit 0 prefixes the
//! patch with a valid header; bits 1-2 pick the declared result (the
//! reference result, one byte longer, one byte shorter, or the base
//! itself); bit 3 leaves the base out of the store. Bytes 1-2: old length.
//!
//! Apply must not panic, and a result it stores must be exactly the declared
//! size and hash to the declared digest: reads past the old file's end,
//! seeks outside it, output longer or shorter than declared, a missing base
//! and a patch naming itself as base all end as `Fallback` or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../harness/delta_apply.rs");

fuzz_target!(|input: &[u8]| run(input));
