//! The one error type of the HTTP edge: every failure becomes a Matrix error
//! body with the spec's status and `errcode`.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use missive_store::StoreError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{errcode}: {message}")]
    Matrix {
        status: StatusCode,
        errcode: &'static str,
        message: String,
        extra: Option<serde_json::Map<String, serde_json::Value>>,
    },
    /// User-interactive authentication must continue: 401 with the flows.
    #[error("user-interactive authentication required")]
    Uia(serde_json::Value),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! constructors {
    ($($name:ident => $status:ident, $code:literal;)*) => {
        impl Error {
            $(pub fn $name(message: impl Into<String>) -> Self {
                Error::Matrix { status: StatusCode::$status, errcode: $code, message: message.into(), extra: None }
            })*
        }
    };
}

constructors! {
    forbidden => FORBIDDEN, "M_FORBIDDEN";
    unauthorized => UNAUTHORIZED, "M_UNAUTHORIZED";
    not_found => NOT_FOUND, "M_NOT_FOUND";
    unrecognized => NOT_FOUND, "M_UNRECOGNIZED";
    bad_json => BAD_REQUEST, "M_BAD_JSON";
    not_json => BAD_REQUEST, "M_NOT_JSON";
    invalid_param => BAD_REQUEST, "M_INVALID_PARAM";
    missing_param => BAD_REQUEST, "M_MISSING_PARAM";
    missing_token => UNAUTHORIZED, "M_MISSING_TOKEN";
    user_in_use => BAD_REQUEST, "M_USER_IN_USE";
    invalid_username => BAD_REQUEST, "M_INVALID_USERNAME";
    exclusive => BAD_REQUEST, "M_EXCLUSIVE";
    too_large => PAYLOAD_TOO_LARGE, "M_TOO_LARGE";
    room_in_use => BAD_REQUEST, "M_ROOM_IN_USE";
    unsupported_room_version => BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION";
    user_deactivated => FORBIDDEN, "M_USER_DEACTIVATED";
    threepid_denied => FORBIDDEN, "M_THREEPID_DENIED";
    weak_password => BAD_REQUEST, "M_WEAK_PASSWORD";
    unknown => INTERNAL_SERVER_ERROR, "M_UNKNOWN";
    bad_state => BAD_REQUEST, "M_BAD_STATE";
    limit_exceeded => TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED";
    cannot_overwrite_media => CONFLICT, "M_CANNOT_OVERWRITE_MEDIA";
    not_yet_uploaded => GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED";
}

impl Error {
    pub fn unknown_token(soft_logout: bool) -> Self {
        let mut extra = serde_json::Map::new();
        extra.insert("soft_logout".into(), soft_logout.into());
        Error::Matrix {
            status: StatusCode::UNAUTHORIZED,
            errcode: "M_UNKNOWN_TOKEN",
            message: "Unknown or expired access token".into(),
            extra: Some(extra),
        }
    }

    pub fn unrecognized_method() -> Self {
        Error::Matrix {
            status: StatusCode::METHOD_NOT_ALLOWED,
            errcode: "M_UNRECOGNIZED",
            message: "Method not allowed for this endpoint".into(),
            extra: None,
        }
    }

    pub fn errcode(&self) -> &'static str {
        match self {
            Error::Matrix { errcode, .. } => errcode,
            Error::Uia(_) => "M_FORBIDDEN",
            Error::Store(StoreError::NotFound) => "M_NOT_FOUND",
            Error::Store(StoreError::Db(missive_store::db::DbError::InvalidText)) => "M_INVALID_PARAM",
            _ => "M_UNKNOWN",
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Error::Matrix {
                status,
                errcode,
                message,
                extra,
            } => {
                let mut body = json!({ "errcode": errcode, "error": message });
                if let Some(extra) = extra {
                    body.as_object_mut().expect("object").extend(extra);
                }
                (status, body)
            }
            Error::Uia(body) => (StatusCode::UNAUTHORIZED, body),
            Error::Store(StoreError::NotFound) => (
                StatusCode::NOT_FOUND,
                json!({ "errcode": "M_NOT_FOUND", "error": "Not found" }),
            ),
            // Text no engine keeps alike: the request's, not the server's fault.
            Error::Store(StoreError::Db(missive_store::db::DbError::InvalidText)) => (
                StatusCode::BAD_REQUEST,
                json!({ "errcode": "M_INVALID_PARAM", "error": "Text may not hold a NUL character" }),
            ),
            e => {
                // Internal detail goes to the log, not to the client.
                tracing::error!(error = %e, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({ "errcode": "M_UNKNOWN", "error": "Internal server error" }),
                )
            }
        };
        (status, axum::Json(body)).into_response()
    }
}
