//! The poll's HTTP client: `GET /load` on one peer's admin server, through hyper's HTTP/1.1
//! client connection over a fresh TCP connection (`Connection: close`).
//!
//! Owns: the request, its bounds (the whole exchange within the caller's timeout; at most
//! [`MAX_RESPONSE_BYTES`] of headers and as much body) and the classification of what went
//! wrong ([`PollError`]). Must never: reuse or pool connections, spawn a task (the connection is
//! driven inside the caller's future, so the timeout drops it with everything else), or read an
//! answer without a bound.

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::http::header;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::control::admin::LoadReport;

/// Most bytes read from a peer's answer (a load report is a few dozen): the head is read into a
/// buffer of at most this size, and the body is cut off past it.
pub const MAX_RESPONSE_BYTES: usize = 16 << 10;

/// Why a peer's load was not learned.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answer larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("not an HTTP response: {0}")]
    Http(#[source] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[source] hyper::http::Error),
    #[error("not a load report: {0}")]
    Json(#[from] serde_json::Error),
}

impl PollError {
    /// Nothing answered: no connection (refused, unreachable) or no answer in time. An HTTP error
    /// or a bad report came from a process that is there.
    pub fn no_answer(&self) -> bool {
        matches!(self, PollError::Connect(_) | PollError::Timeout(_))
    }
}

impl From<hyper::Error> for PollError {
    fn from(error: hyper::Error) -> Self {
        if error.is_parse_too_large() {
            PollError::TooLarge
        } else {
            PollError::Http(error)
        }
    }
}

/// `GET /load` on the admin server at `peer`, all of it within `timeout`.
pub async fn fetch_load(peer: SocketAddr, timeout: Duration) -> Result<LoadReport, PollError> {
    tokio::time::timeout(timeout, ask(peer))
        .await
        .map_err(|_| PollError::Timeout(timeout))?
}

/// The exchange: connect, send the request, read a 200 with a bounded JSON body.
async fn ask(peer: SocketAddr) -> Result<LoadReport, PollError> {
    let stream = TcpStream::connect(peer).await.map_err(PollError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_RESPONSE_BYTES)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await?;
    let request = Request::get("/load")
        .header(header::HOST, peer.to_string())
        .header(header::USER_AGENT, "ringflow-collector")
        .header(header::ACCEPT, "application/json")
        .header(header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(PollError::Request)?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(PollError::Status(response.status().as_u16()));
        }
        read_body(response.into_body()).await
    };
    // The connection is driven here, beside the exchange. If it ends first (the peer closed
    // after its answer, or broke), the exchange finishes from what was read, or fails.
    let mut exchange = pin!(exchange);
    let body = tokio::select! {
        body = &mut exchange => body?,
        ended = connection => {
            ended?;
            exchange.await?
        }
    };
    Ok(serde_json::from_slice(&body)?)
}

/// The whole body, at most [`MAX_RESPONSE_BYTES`].
async fn read_body(body: hyper::body::Incoming) -> Result<Bytes, PollError> {
    match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => match error.downcast::<hyper::Error>() {
            Ok(error) => Err(PollError::from(*error)),
            // Limited's only other error is its length limit (`LengthLimitError`).
            Err(_) => Err(PollError::TooLarge),
        },
    }
}
