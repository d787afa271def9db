//! TODO: objects
