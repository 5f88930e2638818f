//! One request: the credential is checked from the request line and headers before a byte of
//! the body is read, and the body is read within its size, its time and the shared budget.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::secret::Secret;

/// How a listener's client proves itself; checked before the body is read.
#[derive(Debug, Clone)]
pub enum Gate {
    /// A query parameter (Mews webhooks: `?Token=…`).
    Query {
        /// The parameter's name.
        param: &'static str,
        /// Its expected value.
        secret: Secret,
    },
    /// `Authorization: Bearer …` (the local API).
    Bearer(Secret),
}

impl Gate {
    /// Whether the request line and headers carry the credential (compared in constant time).
    pub fn admits(&self, uri: &Uri, headers: &HeaderMap) -> bool {
        let (given, expected) = match self {
            Gate::Query { param, secret } => {
                let given = uri.query().and_then(|query| {
                    form_urlencoded::parse(query.as_bytes())
                        .find(|(key, _)| key == param)
                        .map(|(_, value)| value.into_owned())
                });
                (given, secret)
            }
            Gate::Bearer(secret) => {
                let given = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| {
                        let (scheme, token) = value.trim().split_once(' ')?;
                        scheme
                            .eq_ignore_ascii_case("bearer")
                            .then(|| token.trim().to_owned())
                    });
                (given, secret)
            }
        };
        given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())))
    }
}

/// Bytes of request bodies being read at once, across every listener.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
}

impl BodyBudget {
    /// A budget of `bytes` (at most 4 GiB).
    pub fn new(bytes: u64) -> Self {
        let bytes = bytes.min(u64::from(u32::MAX)) as usize;
        BodyBudget {
            permits: Arc::new(Semaphore::new(bytes)),
        }
    }

    /// Bytes not in use now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    fn take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes).ok()?;
        Arc::clone(&self.permits).try_acquire_many_owned(n).ok()
    }
}

/// A body that was read whole; its bytes count against the budget until it is dropped.
pub struct ReadBody {
    /// The bytes.
    pub bytes: Bytes,
    _held: Option<OwnedSemaphorePermit>,
}

/// Why a body was not read; each maps to the status the client gets.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than the listener's `max_body`.
    #[error("the body is over {0} bytes")]
    TooLarge(usize),
    /// Not complete within `body_timeout`.
    #[error("the body did not arrive within {0:?}")]
    TimedOut(Duration),
    /// Other requests' bodies use up `max_body_in_flight`.
    #[error("too many request bodies in flight")]
    Busy,
    /// The connection failed while reading.
    #[error("reading the body failed: {0}")]
    Read(String),
}

impl BodyError {
    /// The status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The refusal kind (metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            BodyError::TooLarge(_) => "too_large",
            BodyError::TimedOut(_) => "body_timeout",
            BodyError::Busy => "busy",
            BodyError::Read(_) => "body_read",
        }
    }
}

/// Reads a body of at most `max` bytes within `limit`, holding its bytes in `budget`. A declared
/// `Content-Length` over `max` is refused before anything is read.
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    max: usize,
    budget: &BodyBudget,
    limit: Duration,
) -> Result<ReadBody, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut held = match declared {
        Some(len) if len > max as u64 => return Err(BodyError::TooLarge(max)),
        Some(0) => None,
        Some(len) => Some(budget.take(len as usize).ok_or(BodyError::Busy)?),
        None => None,
    };
    let reading = async {
        let mut stream = body.into_data_stream();
        let mut buf: Vec<u8> = Vec::with_capacity(declared.map_or(0, |len| len as usize));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|err| BodyError::Read(err.to_string()))?;
            if buf.len() + chunk.len() > max {
                return Err(BodyError::TooLarge(max));
            }
            if declared.is_none() {
                let more = budget.take(chunk.len()).ok_or(BodyError::Busy)?;
                match held.as_mut() {
                    Some(permit) => permit.merge(more),
                    None => held = Some(more),
                }
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    let bytes = tokio::time::timeout(limit, reading)
        .await
        .map_err(|_| BodyError::TimedOut(limit))??;
    Ok(ReadBody {
        bytes: Bytes::from(bytes),
        _held: held,
    })
}

/// A refusal that also closes the connection, so a body that was not read is never drained.
pub fn refuse(status: StatusCode) -> Response {
    let mut response = status.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> Uri {
        text.parse().unwrap()
    }

    #[test]
    fn query_and_bearer_gates_admit_only_the_exact_secret() {
        let gate = Gate::Query {
            param: "Token",
            secret: Secret::new("s3cret-value"),
        };
        let none = HeaderMap::new();
        assert!(gate.admits(&uri("/h?Token=s3cret-value"), &none));
        assert!(gate.admits(&uri("/h?a=1&Token=s3cret-value"), &none));
        assert!(!gate.admits(&uri("/h?Token=s3cret-valu"), &none));
        assert!(!gate.admits(&uri("/h?token=s3cret-value"), &none));
        assert!(!gate.admits(&uri("/h"), &none));

        let gate = Gate::Bearer(Secret::new("api-token-1"));
        let mut headers = HeaderMap::new();
        assert!(!gate.admits(&uri("/v1/status"), &headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer api-token-1"),
        );
        assert!(gate.admits(&uri("/v1/status"), &headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic api-token-1"),
        );
        assert!(!gate.admits(&uri("/v1/status"), &headers));
    }

    #[tokio::test]
    async fn bodies_are_bounded_by_size_and_budget() {
        let budget = BodyBudget::new(100);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("80"));
        let first = read_body(
            Body::from(vec![b'x'; 80]),
            &headers,
            1000,
            &budget,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(budget.available(), 20);
        let second = read_body(
            Body::from(vec![b'x'; 80]),
            &headers,
            1000,
            &budget,
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(second, Err(BodyError::Busy)));
        drop(first);
        assert_eq!(budget.available(), 100);
        let over = read_body(
            Body::from(vec![b'x'; 80]),
            &headers,
            50,
            &budget,
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(over, Err(BodyError::TooLarge(50))));
        let chunked = read_body(
            Body::from(vec![b'x'; 80]),
            &HeaderMap::new(),
            50,
            &budget,
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(chunked, Err(BodyError::TooLarge(50))));
        assert_eq!(budget.available(), 100);
    }
}
