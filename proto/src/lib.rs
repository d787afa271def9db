//! Wire types shared by the layerlink registry and the device agent.
//!
//! `no_std` + `alloc`, no I/O. Everything that crosses the wire between the
//! two sides is defined here once:
//!
//! * [`Digest`] — a sha256, the name of every blob, layer (diff_id) and file
//!   object;
//! * [`msg`] — the postcard request/response messages under
//!   [`msg::API_PREFIX`];
//! * [`archive`] — the conventions of the dedup archive (PAX keys, marker
//!   entries, reference entries) and pure path validation;
//! * [`limits`] — the bounds both sides enforce;
//! * [`error`] — the error body every failed request carries;
//! * [`framing`] — layer framing ("tar-split"): a layer tar without its
//!   file contents, for the device to recompute the diff_id.
//!
//! The byte-level contract is written down in `proto/SPEC.md` and frozen by
//! the golden tests in `proto/tests/golden.rs`.
#![no_std]
#![cfg_attr(not(feature = "std"), allow(unused_extern_crates))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod archive;
pub mod compact;
pub mod digest;
pub mod error;
pub mod framing;
pub mod limits;
pub mod msg;
pub mod patch;
pub mod time;

pub use digest::{Digest, DigestParseError, Sha256};
pub use error::{ErrorBody, ErrorCode};
