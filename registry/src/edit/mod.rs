//! TODO: edit
