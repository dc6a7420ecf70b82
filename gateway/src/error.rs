//! One error type for every handler: a status, a stable code and a sentence, rendered as
//! `{"error": "<code>", "message": "..."}`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use proto::{ErrorCode, Rejection};
use serde::Deserialize;

#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Sent as `Retry-After` (with 503).
    pub retry_after: Option<Duration>,
    /// A backend's own code, one this gateway does not know (PROTOCOL.md lets a backend
    /// add codes): relayed as it is, with 400, in place of `code`.
    pub foreign: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
            foreign: None,
        }
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after: Duration) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(ErrorCode::Unavailable, message)
        }
    }

    /// A refusal the backend answered with; `retry_after` goes with it when it says
    /// `unavailable` (every 503 tells the client when to try again).
    pub fn from_backend(r: Rejection, retry_after: Duration) -> Self {
        ApiError {
            retry_after: (r.error == ErrorCode::Unavailable).then_some(retry_after),
            ..ApiError::from(r)
        }
    }

    /// The refusal in a backend reply that did not read as the reply expected:
    /// `{"ok": false, "error", "message"}` with any code, one this gateway does not know
    /// relayed as [`Self::foreign`]. `None` if the reply is no refusal at all.
    pub fn refusal_in(reply: &[u8], retry_after: Duration) -> Option<Self> {
        #[derive(Deserialize)]
        struct Refusal {
            ok: bool,
            error: String,
            #[serde(default)]
            message: String,
        }
        let r = serde_json::from_slice::<Refusal>(reply)
            .ok()
            .filter(|r| !r.ok && !r.error.is_empty())?;
        Some(
            match serde_json::from_value::<ErrorCode>(r.error.clone().into()) {
                Ok(code) => ApiError::from_backend(Rejection::new(code, r.message), retry_after),
                Err(_) => ApiError {
                    foreign: Some(r.error),
                    ..ApiError::new(ErrorCode::Internal, r.message)
                },
            },
        )
    }

    pub fn status(&self) -> StatusCode {
        if let Some(code) = &self.foreign {
            // A backend's own word for something that is not there is still a 404, as
            // PROTOCOL.md answers a room that is not there.
            let absent = code.starts_with("no_such") || code.ends_with("not_found");
            return if absent {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
        }
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError::new(r.error, r.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(code = self.code.as_str(), message = %self.message, "request failed");
        }
        let mut response = match self.foreign {
            Some(code) => {
                let body = serde_json::json!({"error": code, "message": self.message});
                (status, Json(body)).into_response()
            }
            None => (status, Json(Rejection::new(self.code, self.message))).into_response(),
        };
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
