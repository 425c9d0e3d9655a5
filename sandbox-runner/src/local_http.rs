//! A minimal HTTP/1.1 client for local key- and quote-provider endpoints (unix socket or
//! loopback TCP).
//!
//! Providers live on the same machine (dstack's guest agent socket, Confidential Containers'
//! in-guest API server), so this speaks just enough HTTP/1.1 to make one request with
//! `Connection: close`, read the response to the end (bounded in size and time), and decode a
//! `Content-Length` or chunked body. Response buffers may hold key material, so they are
//! zeroized on drop. Errors never carry a response body.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use zeroize::Zeroizing;

/// Why one exchange with a local provider failed (the caller names the provider).
#[derive(Debug, thiserror::Error)]
pub enum LocalHttpError {
    /// Connecting failed.
    #[error("connecting to {endpoint} failed: {source}")]
    Connect {
        /// The endpoint connected to.
        endpoint: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// Sending the request or reading the response failed.
    #[error("{step} failed: {source}")]
    Exchange {
        /// `sending the request` or `reading the response`.
        step: &'static str,
        /// The IO error.
        source: std::io::Error,
    },
    /// No complete answer in time.
    #[error("no answer within {seconds}s")]
    Timeout {
        /// The time limit.
        seconds: u64,
    },
    /// The answer is not a usable HTTP response.
    #[error("reading the response: {0}")]
    Response(&'static str),
}

/// Upper bound on a response (headers and body): a key answer is a few hundred bytes, a quote
/// with its event log tens of KiB.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How long one exchange may take before the provider is considered unavailable.
pub(crate) const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a provider listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// A unix socket path.
    Unix(PathBuf),
    /// Plain HTTP over TCP: `authority` is `host:port`, `base_path` has no trailing `/`.
    Tcp {
        authority: String,
        base_path: String,
    },
}

/// Parses an endpoint: `http://host[:port][/base]` is TCP; anything else not starting with a
/// scheme is a unix socket path (pure).
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<Endpoint, &'static str> {
    if let Some(rest) = endpoint.strip_prefix("http://") {
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err("it has no host");
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        return Ok(Endpoint::Tcp {
            authority,
            base_path: path.trim_end_matches('/').to_owned(),
        });
    }
    if endpoint.starts_with("https://") {
        return Err("https is not supported for local key providers; use http:// or a unix socket");
    }
    if endpoint.contains("://") {
        return Err("only http:// and unix socket paths are supported");
    }
    if endpoint.is_empty() {
        return Err("it is empty");
    }
    Ok(Endpoint::Unix(PathBuf::from(endpoint)))
}

/// A response: status and (zeroized-on-drop) body.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Zeroizing<Vec<u8>>,
}

/// One request to a provider.
pub(crate) struct Request<'a> {
    pub(crate) method: &'static str,
    /// Path below the endpoint's base path, starting with `/`.
    pub(crate) path: &'a str,
    /// The `Host` header for unix sockets (TCP uses the authority).
    pub(crate) unix_host: &'static str,
    /// A JSON body, if any.
    pub(crate) json_body: Option<&'a [u8]>,
}

/// Sends `request` to `endpoint` and reads the whole response, within [`EXCHANGE_TIMEOUT`].
pub(crate) async fn exchange(
    endpoint: &Endpoint,
    request: &Request<'_>,
) -> Result<Response, LocalHttpError> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange_inner(endpoint, request))
        .await
        .map_err(|_| LocalHttpError::Timeout {
            seconds: EXCHANGE_TIMEOUT.as_secs(),
        })?
}

async fn exchange_inner(
    endpoint: &Endpoint,
    request: &Request<'_>,
) -> Result<Response, LocalHttpError> {
    match endpoint {
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|source| LocalHttpError::Connect {
                    endpoint: path.display().to_string(),
                    source,
                })?;
            let head = request_head(request, request.unix_host, request.path);
            over_stream(stream, &head, request.json_body).await
        }
        Endpoint::Tcp {
            authority,
            base_path,
        } => {
            let stream = tokio::net::TcpStream::connect(authority.as_str())
                .await
                .map_err(|source| LocalHttpError::Connect {
                    endpoint: authority.clone(),
                    source,
                })?;
            let path = format!("{base_path}{}", request.path);
            let head = request_head(request, authority, &path);
            over_stream(stream, &head, request.json_body).await
        }
    }
}

/// The request line and headers (pure).
fn request_head(request: &Request<'_>, host: &str, path: &str) -> String {
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json, application/octet-stream\r\n",
        request.method
    );
    match request.json_body {
        Some(body) => head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )),
        None => head.push_str("\r\n"),
    }
    head
}

async fn over_stream<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    head: &str,
    body: Option<&[u8]>,
) -> Result<Response, LocalHttpError> {
    let send_err = |source| LocalHttpError::Exchange {
        step: "sending the request",
        source,
    };
    stream.write_all(head.as_bytes()).await.map_err(send_err)?;
    if let Some(body) = body {
        stream.write_all(body).await.map_err(send_err)?;
    }
    stream.flush().await.map_err(send_err)?;

    let mut raw = Zeroizing::new(Vec::with_capacity(16 * 1024));
    let mut chunk = Zeroizing::new([0u8; 8192]);
    loop {
        let n = stream
            .read(&mut chunk[..])
            .await
            .map_err(|source| LocalHttpError::Exchange {
                step: "reading the response",
                source,
            })?;
        if n == 0 {
            break;
        }
        if raw.len() + n > MAX_RESPONSE_BYTES {
            return Err(LocalHttpError::Response(
                "the response is larger than 1 MiB",
            ));
        }
        raw.extend_from_slice(&chunk[..n]);
        if response_complete(&raw) {
            break;
        }
    }
    parse_response(&raw).map_err(LocalHttpError::Response)
}

/// Whether a `Content-Length` response has fully arrived (lets us stop before EOF).
fn response_complete(raw: &[u8]) -> bool {
    let Some(end) = find(raw, b"\r\n\r\n") else {
        return false;
    };
    let Ok(head) = std::str::from_utf8(&raw[..end]) else {
        return false;
    };
    match header(head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(len) => raw.len() >= end + 4 + len,
        None => false,
    }
}

/// Parses a complete HTTP/1.1 response (pure).
pub(crate) fn parse_response(raw: &[u8]) -> Result<Response, &'static str> {
    let end = find(raw, b"\r\n\r\n").ok_or("the response has no complete header")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the response header is not UTF-8")?;
    let status_line = head.lines().next().ok_or("the response is empty")?;
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err("the response is not HTTP/1.x");
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("the response has no status code")?;
    let rest = &raw[end + 4..];
    let chunked = header(head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = header(head, "content-length") {
        let len: usize = len.parse().map_err(|_| "the Content-Length is invalid")?;
        let body = rest
            .get(..len)
            .ok_or("the body is shorter than its Content-Length")?;
        Zeroizing::new(body.to_vec())
    } else {
        Zeroizing::new(rest.to_vec())
    };
    Ok(Response { status, body })
}

fn decode_chunked(mut rest: &[u8]) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let mut body = Zeroizing::new(Vec::new());
    loop {
        let line_end = find(rest, b"\r\n").ok_or("a chunk size line is incomplete")?;
        let size_text =
            std::str::from_utf8(&rest[..line_end]).map_err(|_| "a chunk size is not text")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| "a chunk size is not hexadecimal")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let data = rest.get(..size).ok_or("a chunk is truncated")?;
        body.extend_from_slice(data);
        rest = rest.get(size + 2..).ok_or("a chunk is truncated")?;
    }
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_are_tcp_and_paths_are_unix_sockets() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:8006").expect("valid"),
            Endpoint::Tcp {
                authority: "127.0.0.1:8006".to_owned(),
                base_path: String::new()
            }
        );
        assert_eq!(
            parse_endpoint("http://localhost/api/").expect("valid"),
            Endpoint::Tcp {
                authority: "localhost:80".to_owned(),
                base_path: "/api".to_owned()
            }
        );
        assert_eq!(
            parse_endpoint("/var/run/dstack.sock").expect("valid"),
            Endpoint::Unix(PathBuf::from("/var/run/dstack.sock"))
        );
        assert!(parse_endpoint("https://x").is_err());
        assert!(parse_endpoint("ftp://x").is_err());
        assert!(parse_endpoint("").is_err());
    }

    #[test]
    fn content_length_body_is_cut_at_its_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        let response = parse_response(raw).expect("parses");
        assert_eq!(response.status, 200);
        assert_eq!(response.body.as_slice(), b"hello");
    }

    #[test]
    fn chunked_body_is_reassembled() {
        let raw = b"HTTP/1.1 500 Internal\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let response = parse_response(raw).expect("parses");
        assert_eq!(response.status, 500);
        assert_eq!(response.body.as_slice(), b"abcde");
    }

    #[test]
    fn truncated_responses_are_rejected() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SMTP 200 OK\r\n\r\n").is_err());
    }
}
