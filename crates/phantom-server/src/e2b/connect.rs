//! The Connect protocol (connectrpc.com/docs/protocol), JSON codec only, as E2B's
//! in-sandbox daemon speaks it: unary calls are a JSON body answered with a JSON body
//! (errors: an HTTP status and `{"code", "message"}`); server-streaming calls are
//! enveloped messages both ways — one byte of flags, a 4-byte big-endian length, the
//! JSON — ending with an end-of-stream envelope (flag 0x02) that carries the error, if
//! any.

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// The content type of a streaming call with the JSON codec.
pub const STREAM_JSON: &str = "application/connect+json";

/// Flag of a compressed message (we never advertise compression, so it is refused).
const COMPRESSED: u8 = 0x01;
/// Flag of the end-of-stream message.
const END_STREAM: u8 = 0x02;

/// A Connect error code (the protocol's closed set, as far as we answer with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unavailable,
    DeadlineExceeded,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::NotFound => "not_found",
            Code::PermissionDenied => "permission_denied",
            Code::Unauthenticated => "unauthenticated",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DeadlineExceeded => "deadline_exceeded",
        }
    }

    /// The HTTP status of a unary call that fails with this code (the protocol's
    /// table).
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The code of an HTTP status of ours.
    pub fn of_status(status: StatusCode) -> Code {
        match status.as_u16() {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            409 => Code::FailedPrecondition,
            429 => Code::ResourceExhausted,
            501 => Code::Unimplemented,
            503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Internal,
        }
    }
}

/// A Connect error: what a unary call answers, or what ends a stream.
#[derive(Debug, Clone)]
pub struct Error {
    pub code: Code,
    pub message: String,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code.as_str(), "message": self.message })
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (
            self.code.http_status(),
            [(header::CONTENT_TYPE, "application/json")],
            self.json().to_string(),
        )
            .into_response()
    }
}

/// One enveloped message.
pub fn envelope(message: &serde_json::Value) -> Bytes {
    frame(0, message.to_string().as_bytes())
}

/// The end-of-stream message: `{}`, or the error.
pub fn end_stream(error: Option<&Error>) -> Bytes {
    let body = match error {
        Some(e) => serde_json::json!({ "error": e.json() }),
        None => serde_json::json!({}),
    };
    frame(END_STREAM, body.to_string().as_bytes())
}

fn frame(flags: u8, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + data.len());
    out.push(flags);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out.into()
}

/// A streaming call's content type must be the JSON codec's.
pub fn check_stream_type(headers: &HeaderMap) -> Result<(), Error> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with(STREAM_JSON) {
        return Err(Error::new(
            Code::InvalidArgument,
            format!("content type {content_type:?}: this server speaks {STREAM_JSON} (the JSON codec) on streaming calls"),
        ));
    }
    Ok(())
}

/// The one message of a server-streaming request's body.
pub fn single_message<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, Error> {
    check_stream_type(headers)?;
    let mut body = body.to_vec();
    next_message(&mut body)?.ok_or_else(|| {
        Error::new(
            Code::InvalidArgument,
            match body.len() {
                0..5 => "the request holds no enveloped message",
                _ => "the enveloped message is cut short",
            },
        )
    })
}

/// Take the first whole enveloped message off `buf` (a client stream read so far);
/// None until one has arrived in full.
pub fn next_message<T: DeserializeOwned>(buf: &mut Vec<u8>) -> Result<Option<T>, Error> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let flags = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if flags & COMPRESSED != 0 {
        return Err(Error::new(
            Code::Unimplemented,
            "compressed messages are not accepted: send them uncompressed",
        ));
    }
    if len > MAX_MESSAGE {
        return Err(Error::new(
            Code::ResourceExhausted,
            format!("a message of {len} bytes: at most {MAX_MESSAGE}"),
        ));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let message = serde_json::from_slice(&buf[5..5 + len])
        .map_err(|e| Error::new(Code::InvalidArgument, format!("the message: {e}")));
    buf.drain(..5 + len);
    message.map(Some)
}

/// The largest enveloped message a client may send (a chunk of stdin, base64).
const MAX_MESSAGE: usize = 16 << 20;

/// A unary request's JSON body (an empty body is the empty message).
pub fn unary_message<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| Error::new(Code::InvalidArgument, format!("the message: {e}")))
}

/// A unary answer.
pub fn unary_ok(message: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        message.to_string(),
    )
        .into_response()
}

/// `Connect-Timeout-Ms`, when the client set one.
pub fn timeout_ms(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .filter(|ms| *ms > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_is_flags_length_and_json() {
        let e = envelope(&serde_json::json!({"a": 1}));
        assert_eq!(&e[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(&e[5..], br#"{"a":1}"#);
        let end = end_stream(Some(&Error::new(Code::NotFound, "gone")));
        assert_eq!(end[0], END_STREAM);
        let v: serde_json::Value = serde_json::from_slice(&end[5..]).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
    }

    #[test]
    fn a_streaming_request_is_read_from_its_envelope_and_bad_ones_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, STREAM_JSON.parse().unwrap());
        let body = envelope(&serde_json::json!({"x": "y"}));
        let v: serde_json::Value = single_message(&headers, &body).unwrap();
        assert_eq!(v["x"], "y");
        assert!(single_message::<serde_json::Value>(&headers, &body[..6]).is_err());
        let mut stream = [body.to_vec(), body.to_vec()].concat();
        stream.truncate(stream.len() - 1);
        let first: serde_json::Value = next_message(&mut stream).unwrap().unwrap();
        assert_eq!(first["x"], "y");
        assert!(next_message::<serde_json::Value>(&mut stream)
            .unwrap()
            .is_none());
        stream.push(b'}');
        let second: serde_json::Value = next_message(&mut stream).unwrap().unwrap();
        assert_eq!((second["x"].as_str(), stream.len()), (Some("y"), 0));
        let mut compressed = body.to_vec();
        compressed[0] = COMPRESSED;
        let e = single_message::<serde_json::Value>(&headers, &compressed).unwrap_err();
        assert_eq!(e.code, Code::Unimplemented);
        headers.insert(header::CONTENT_TYPE, "application/proto".parse().unwrap());
        let e = single_message::<serde_json::Value>(&headers, &body).unwrap_err();
        assert!(e.message.contains("JSON"), "{}", e.message);
    }
}
