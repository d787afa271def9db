//! Distribution-spec errors: an HTTP status plus a JSON body
//! `{"errors":[{"code":"BLOB_UNKNOWN","message":"…","detail":…}]}`.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error answer of the OCI endpoints.
#[derive(Debug)]
pub struct OciError {
    /// HTTP status.
    pub status: StatusCode,
    /// Spec error code (`BLOB_UNKNOWN`, …).
    pub code: &'static str,
    /// Human message.
    pub message: String,
    /// Optional structured detail (e.g. the digest concerned).
    pub detail: Option<serde_json::Value>,
    /// Extra response headers (`WWW-Authenticate`, `Range`, …).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl OciError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> OciError {
        OciError {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    /// Add a structured detail.
    pub fn with_detail(mut self, detail: serde_json::Value) -> OciError {
        self.detail = Some(detail);
        self
    }

    /// Add a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> OciError {
        self.headers.push((name, value));
        self
    }

    /// 404 `BLOB_UNKNOWN`.
    pub fn blob_unknown(digest: &str) -> OciError {
        OciError::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob unknown to registry: {digest}"),
        )
        .with_detail(serde_json::json!({ "digest": digest }))
    }

    /// 400 `DIGEST_INVALID`.
    pub fn digest_invalid(message: impl Into<String>) -> OciError {
        OciError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", message)
    }

    /// 404 `BLOB_UPLOAD_UNKNOWN`.
    pub fn upload_unknown(id: &str) -> OciError {
        OciError::new(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            format!("blob upload unknown: {id}"),
        )
    }

    /// 400 `BLOB_UPLOAD_INVALID`.
    pub fn upload_invalid(message: impl Into<String>) -> OciError {
        OciError::new(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", message)
    }

    /// 400 `MANIFEST_INVALID`.
    pub fn manifest_invalid(message: impl Into<String>) -> OciError {
        OciError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", message)
    }

    /// 400 `MANIFEST_BLOB_UNKNOWN`.
    pub fn manifest_blob_unknown(digest: &str) -> OciError {
        OciError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
            format!(
                "manifest references a blob unknown to this repository: {digest}; push it first"
            ),
        )
        .with_detail(serde_json::json!({ "digest": digest }))
    }

    /// 404 `MANIFEST_UNKNOWN`.
    pub fn manifest_unknown(reference: &str) -> OciError {
        OciError::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("manifest unknown: {reference}"),
        )
    }

    /// 404 `NAME_UNKNOWN`.
    pub fn name_unknown(name: &str) -> OciError {
        OciError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("repository name not known to registry: {name}"),
        )
    }

    /// 400 `NAME_INVALID`.
    pub fn name_invalid(name: &str) -> OciError {
        OciError::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("invalid repository name: {name:?}"),
        )
    }

    /// 400 `TAG_INVALID`.
    pub fn tag_invalid(tag: &str) -> OciError {
        OciError::new(
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
            format!("invalid tag: {tag:?}"),
        )
    }

    /// 401 `UNAUTHORIZED` with the basic-auth challenge.
    pub fn unauthorized() -> OciError {
        OciError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required",
        )
        .with_header(
            axum::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"layerlink\""),
        )
    }

    /// `UNSUPPORTED` with `status` (405 for an operation, 415 for a media type).
    pub fn unsupported(status: StatusCode, message: impl Into<String>) -> OciError {
        OciError::new(status, "UNSUPPORTED", message)
    }

    /// 500 for a storage failure; the cause is logged, not sent.
    pub fn internal(err: impl std::fmt::Display) -> OciError {
        tracing::error!("storage error: {err:#}");
        OciError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            "internal storage error, see the registry log",
        )
    }
}

impl From<anyhow::Error> for OciError {
    fn from(e: anyhow::Error) -> OciError {
        OciError::internal(format!("{e:#}"))
    }
}

impl From<std::io::Error> for OciError {
    fn from(e: std::io::Error) -> OciError {
        OciError::internal(e)
    }
}

impl From<tokio::task::JoinError> for OciError {
    fn from(e: tokio::task::JoinError) -> OciError {
        OciError::internal(e)
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let mut entry = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(detail) = self.detail {
            entry["detail"] = detail;
        }
        let body = serde_json::json!({ "errors": [entry] }).to_string();
        let mut resp = (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}
