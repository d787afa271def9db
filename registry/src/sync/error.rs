//! The domain error of a sync request. Its HTTP mapping (status from the
//! code, postcard [`ErrorBody`], `WWW-Authenticate` on 401) is in
//! [`crate::http::sync`].

use layerlink_proto::{ErrorBody, ErrorCode};

/// A failed sync request: the code (and its HTTP status) and a message for
/// a human. Sent as a postcard [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// What went wrong, naming the thing.
    pub message: String,
}

impl SyncError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> SyncError {
        SyncError {
            code,
            message: message.into(),
        }
    }

    /// A registry-side failure (500), logged.
    pub fn internal(e: impl std::fmt::Display) -> SyncError {
        let message = e.to_string();
        tracing::error!("sync request failed: {message}");
        SyncError::new(ErrorCode::Internal, message)
    }

    /// The wire body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for SyncError {}
