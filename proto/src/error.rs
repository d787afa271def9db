//! The error body every failed `/layerlink/v1/` request carries.

use alloc::string::String;
use serde::{Deserialize, Serialize};

/// What went wrong, machine-readable. Sent with the matching HTTP status
/// (given by [`ErrorCode::http_status`]).
///
/// New codes are only ever appended, so existing discriminants stay stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request body could not be decoded or breaks a limit. 400.
    BadRequest,
    /// No token, or a token the registry does not know. 401.
    Unauthorized,
    /// The device may not read this repository. Sent as 401 too, so that a
    /// device cannot learn whether an image it may not read exists.
    Forbidden,
    /// The repository, tag, manifest, layer or object is unknown. 404.
    NotFound,
    /// The request sent [`crate::msg::Holdings::Hash`] and the registry has
    /// no recorded set with that hash for this device: resend in full. 409.
    UnknownHoldingsSet,
    /// The image is an index with no manifest for the device's platform. 404.
    PlatformNotFound,
    /// A list or body is larger than [`crate::limits`] allows. 413.
    TooLarge,
    /// The registry failed; retrying later may work. 500.
    Internal,
    /// The registry is busy or still ingesting; retry later. 503.
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status sent with this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized | ErrorCode::Forbidden => 401,
            ErrorCode::NotFound | ErrorCode::PlatformNotFound => 404,
            ErrorCode::UnknownHoldingsSet => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// Whether a client should retry the same request later.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorCode::Internal | ErrorCode::Unavailable)
    }
}

/// The body of every error response under `/layerlink/v1/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// A message for a human: names the thing (image, digest, device) and
    /// what to do.
    pub message: String,
}
