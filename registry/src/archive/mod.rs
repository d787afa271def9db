//! The dedup archive writer (see `proto/SPEC.md`, "Dedup archive").

pub mod tarfmt;
