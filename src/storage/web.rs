//! The HTTP client under the Google Cloud Storage and Azure backends: hyper with rustls
//! and the system's root certificates (the TLS stack the S3 client already links, so it
//! adds little to the binary), a connect timeout, a timeout on silence, and transport
//! failures sorted into wale's error classes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncRead, ReadBuf};

use super::{Body, Error, ObjectReader, error_chain, innermost, refuses_connections};

/// As for S3: connecting should never take longer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A response that sends nothing for this long is treated as a stalled connection.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a listing, metadata or error document may hold.
const MAX_DOCUMENT: usize = 64 << 20;

/// A request as the backends build it.
pub(super) type Request = http::Request<Full<Bytes>>;
/// A response whose body has not been read yet.
pub(super) type Response = http::Response<Incoming>;

/// A pooled HTTP/1.1 client for `http://` (emulators) and `https://` endpoints.
pub(super) struct HttpClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    /// Builds the client. With `tls` (some URL it will ask is `https://`) the system's
    /// root certificates are read here, once per process; a client that only talks to a
    /// plain `http://` emulator skips that.
    pub(super) fn new(tls: bool) -> HttpClient {
        let mut roots = rustls::RootCertStore::empty();
        if tls {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A certificate rustls cannot use is skipped, as every TLS client does.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                tracing::warn!(
                    "no usable root certificates found in the system's store (is ca-certificates installed?): HTTPS servers cannot be verified"
                );
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the default TLS versions are supported by the default provider")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        tcp.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends a request and waits for the response's head, whatever its status. `url`
    /// names what is asked for in errors.
    pub(super) async fn send(&self, request: Request, url: &str) -> Result<Response, Error> {
        match tokio::time::timeout(READ_TIMEOUT, self.client.request(request)).await {
            Err(_) => Err(Error::Transient {
                url: url.to_string(),
                detail: "timed out".into(),
            }),
            Ok(Err(err)) => Err(transport_error(url, &err)),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// Sorts a failure below HTTP: nothing listening (or no such host) is
/// [`Error::Unreachable`]; anything else (a reset, a closed connection) may pass.
fn transport_error(url: &str, err: &hyper_util::client::legacy::Error) -> Error {
    let url = url.to_string();
    if is_tls_failure(err) {
        // An untrusted or expired certificate does not fix itself by retrying.
        return Error::Permanent {
            url,
            detail: format!("TLS: {}", innermost(err)),
        };
    }
    if err.is_connect() {
        let detail = format!("cannot connect: {}", innermost(err));
        if refuses_connections(err) {
            return Error::Unreachable { url, detail };
        }
        return Error::Transient { url, detail };
    }
    Error::Transient {
        url,
        detail: format!("connection failed: {}", error_chain(err)),
    }
}

/// Whether TLS refused the connection (certificate, protocol), somewhere in the chain.
fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Reads a small response body whole (a listing page, metadata, an error document).
pub(super) async fn read_document(response: Response, url: &str) -> Result<Bytes, Error> {
    let transient = |detail: String| Error::Transient {
        url: url.to_string(),
        detail,
    };
    let limited = http_body_util::Limited::new(response.into_body(), MAX_DOCUMENT);
    match tokio::time::timeout(READ_TIMEOUT, limited.collect()).await {
        Err(_) => Err(transient("timed out reading the response".into())),
        Ok(Err(err)) => Err(transient(format!("reading the response failed: {err}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The value of a response header, if it is text.
pub(super) fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name)?.to_str().ok()
}

/// An object's body as the decoders read it, from the answer to a GET (`offset`: the
/// ranged GET that resumes a broken read, whose answer is checked to start there).
pub(super) fn object_reader(
    response: Response,
    offset: Option<u64>,
    url: String,
) -> Result<ObjectReader, Error> {
    if let Some(offset) = offset {
        let status = response.status().as_u16();
        check_partial(status, header(&response, "content-range"), offset, &url)?;
    }
    Ok(ObjectReader {
        size: content_length(&response),
        url,
        body: Body::Async(Box::pin(BodyReader::new(response))),
    })
}

/// Checks that a ranged GET from `offset` got that range (206 and `Content-Range: bytes
/// offset-…`): a server that ignored the range and sent the whole object would make a
/// resumed reader append the object from its start.
fn check_partial(status: u16, range: Option<&str>, offset: u64, url: &str) -> Result<(), Error> {
    let range = range.unwrap_or_default();
    let starts = range
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('-'))
        .and_then(|(from, _)| from.parse::<u64>().ok());
    if status == 206 && starts == Some(offset) {
        return Ok(());
    }
    Err(Error::Permanent {
        url: url.to_string(),
        detail: format!(
            "asked for the bytes from {offset} on, the store answered HTTP {status} with range {range:?}"
        ),
    })
}

/// The body's length as the response announces it.
pub(super) fn content_length(response: &Response) -> Option<u64> {
    header(response, "content-length")?.parse().ok()
}

/// A response body as a byte stream for the decoders; a body that stays silent for
/// [`READ_TIMEOUT`] fails (`TimedOut`), so a stalled connection is retried or resumed.
/// Only time spent waiting on the network counts, not time the reader spent elsewhere.
struct BodyReader {
    body: Incoming,
    current: Bytes,
    silence: Pin<Box<tokio::time::Sleep>>,
    /// Whether `silence` runs: from the first poll that found no data.
    waiting: bool,
}

impl BodyReader {
    /// Streams `response`'s body.
    fn new(response: Response) -> BodyReader {
        BodyReader {
            body: response.into_body(),
            current: Bytes::new(),
            silence: Box::pin(tokio::time::sleep(READ_TIMEOUT)),
            waiting: false,
        }
    }
}

impl AsyncRead for BodyReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.current.is_empty() {
                let n = buf.remaining().min(self.current.len());
                buf.put_slice(&self.current.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if !self.waiting {
                self.waiting = true;
                let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
                self.silence.as_mut().reset(deadline);
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.waiting = false;
                    if let Ok(data) = frame.into_data() {
                        self.current = data;
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    let kind = if err.is_incomplete_message() {
                        io::ErrorKind::UnexpectedEof
                    } else {
                        io::ErrorKind::Other
                    };
                    return Poll::Ready(Err(io::Error::new(kind, err)));
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match self.silence.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no data for {} s", READ_TIMEOUT.as_secs()),
                        ))),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (and `/` when
/// `keep_slash`): an object name as one path segment, or a query value.
pub(super) fn encode(text: &str, keep_slash: bool) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    const PATH: &percent_encoding::AsciiSet = &UNRESERVED.remove(b'/');
    let set = if keep_slash { PATH } else { UNRESERVED };
    percent_encoding::utf8_percent_encode(text, set).to_string()
}

/// `?a=1&b=2` from pairs, values encoded; empty values are kept (`&marker=`).
pub(super) fn query_string(pairs: &[(&str, String)]) -> String {
    let joined: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("{name}={}", encode(value, false)))
        .collect();
    if joined.is_empty() {
        String::new()
    } else {
        format!("?{}", joined.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_read_accepts_only_the_range_it_asked_for() {
        let url = "gs://b/k";
        assert!(check_partial(206, Some("bytes 1000-4999/5000"), 1000, url).is_ok());
        // A server that ignored the range, or answered another one, must not be appended.
        for (status, range) in [(200, None), (206, Some("bytes 0-4999/5000")), (206, None)] {
            let err = check_partial(status, range, 1000, url).unwrap_err();
            assert!(matches!(err, Error::Permanent { .. }), "{err}");
            assert!(err.to_string().contains("from 1000"), "{err}");
        }
    }

    #[test]
    fn names_and_queries_are_encoded() {
        assert_eq!(encode("/p/wal_005/x.lzo", false), "%2Fp%2Fwal_005%2Fx.lzo");
        assert_eq!(encode("p q/wal_005/x~", true), "p%20q/wal_005/x~");
        assert_eq!(
            query_string(&[("prefix", "/a b/".into()), ("marker", String::new())]),
            "?prefix=%2Fa%20b%2F&marker="
        );
        assert_eq!(query_string(&[]), "");
    }
}
