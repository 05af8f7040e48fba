//! One error type for every REST handler, turned into a response in one place:
//! `{ success: false, error: { code, message, field? } }` with the right status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::log_entry::FieldError;

#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AppError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn unauthorized(message: &str) -> Self {
        AppError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn bad_field(e: FieldError) -> Self {
        AppError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            message: e.to_string(),
            field: Some(e.field),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(field) = self.field {
            error["field"] = field.into();
        }
        (
            self.status,
            axum::Json(json!({ "success": false, "error": error })),
        )
            .into_response()
    }
}

impl From<axum::extract::rejection::BytesRejection> for AppError {
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_body"
        };
        AppError::new(status, code, r.body_text())
    }
}

/// Compare secrets without an early exit on the first differing byte.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
