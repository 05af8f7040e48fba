//! One error type for every REST handler, turned into a response in one place:
//! `{ success: false, error: { code, message, field? } }` with the right status. The payload
//! is the same [`ClientError`] sockets receive.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::bus::PublishError;
use crate::log_entry::FieldError;
use crate::protocol::{ClientError, Code};

#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub error: ClientError,
}

impl AppError {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        AppError {
            status,
            error: ClientError::new(code, message),
        }
    }

    pub fn unauthorized(message: &str) -> Self {
        AppError::new(StatusCode::UNAUTHORIZED, Code::Unauthorized, message)
    }

    pub fn bad_field(e: FieldError) -> Self {
        AppError {
            status: StatusCode::BAD_REQUEST,
            error: ClientError::new(Code::InvalidField, e.to_string()).field(e.field),
        }
    }

    /// A body that could not be read: too large (naming the limit) or broken.
    pub fn body(r: BytesRejection, max_body_bytes: usize) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::PayloadTooLarge,
                format!("the body is larger than max_body_bytes ({max_body_bytes} bytes)"),
            )
        } else {
            AppError::new(r.status(), Code::BadBody, r.body_text())
        }
    }

    /// The bus refused a publish.
    pub fn unavailable(e: PublishError) -> Self {
        let code = match e {
            PublishError::Overloaded => Code::Overloaded,
            PublishError::Closed => Code::ShuttingDown,
            PublishError::Unavailable(_) => Code::BusUnavailable,
            PublishError::HistoryUnavailable(_) => Code::HistoryUnavailable,
        };
        AppError::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = %self.error.code, message = %self.error.message, "request failed");
        }
        (
            self.status,
            axum::Json(json!({ "success": false, "error": self.error })),
        )
            .into_response()
    }
}

/// Compare secrets without an early exit on the first differing byte.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Unknown routes answer in the same JSON shape.
pub async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::new(
        StatusCode::NOT_FOUND,
        Code::NotFound,
        format!("no route {}", uri.path()),
    )
}

/// A known route with another method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
