//! The OpenStack Swift backend, on Swift's object API.
//!
//! WAL-E stored every object under `swift://container/path` as `"/" + logical key` (the
//! URL's path with its leading slash, as on GCS): `/path/wal_005/…`, on the wire
//! `…/v1/AUTH_x/container//path/wal_005/…`. Listings ask for that `/`-prefixed prefix.
//!
//! A token and the account's storage URL come from authentication (v1 tempauth/swauth, or
//! Keystone v2/v3 in [`keystone`]); they are kept for the process, renewed before they
//! expire when the server said when, and renewed once when Swift answers 401 (a revoked
//! token): a second 401 is a refusal.

mod keystone;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;

use super::web::{self, HttpClient, Response, encode, query_string};
use super::{Error, Listing, ObjectMeta, ObjectReader, Storage, parse_rfc3339_utc, unix_parts};
use crate::config::{AuthVersion, SwiftAuth, SwiftConfig};
use keystone::Grant;

/// The most names Swift sends in one listing (its `CONTAINER_LISTING_LIMIT`).
pub const PAGE_LIMIT: usize = 10_000;
/// A token is renewed when it has less than this left (or half its life, if shorter).
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// A container and the client that reads it.
pub struct SwiftStore {
    http: HttpClient,
    container: String,
    auth: Box<SwiftAuth>,
    session: tokio::sync::Mutex<Option<Session>>,
    /// Whether the container was seen to exist (a 404 then means the object is missing).
    container_exists: std::sync::atomic::AtomicBool,
}

/// A token in use: what authentication granted, and when to stop using it.
#[derive(Clone)]
struct Session {
    grant: Grant,
    until: Option<Instant>,
}

/// A request to the object API, before the token is added.
struct Call<'a> {
    method: ::http::Method,
    /// The object's logical key, or `None` for the container itself.
    key: Option<&'a str>,
    query: Vec<(&'a str, String)>,
    range_from: Option<u64>,
    /// What the request is about, for messages.
    url: &'a str,
}

impl SwiftStore {
    /// Builds the client; nothing is sent (not even authentication) until a command asks.
    pub fn connect(config: &SwiftConfig) -> SwiftStore {
        SwiftStore {
            http: HttpClient::new(config.auth.may_use_tls()),
            container: config.container.clone(),
            auth: config.auth.clone(),
            session: tokio::sync::Mutex::new(None),
            container_exists: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The token to use: the kept one while it is valid, else a new one.
    async fn session(&self) -> Result<Session, Error> {
        let mut kept = self.session.lock().await;
        if let Some(session) = kept.as_ref()
            && session.until.is_none_or(|until| Instant::now() < until)
        {
            return Ok(session.clone());
        }
        let grant = self.authenticate().await?;
        let until = grant.expires.map(|expires| {
            let life = expires
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            Instant::now() + life.saturating_sub(TOKEN_MARGIN.min(life / 2))
        });
        let session = Session { grant, until };
        *kept = Some(session.clone());
        Ok(session)
    }

    /// Forgets `token` after Swift refused it, unless another request already replaced it.
    async fn forget(&self, token: &str) {
        let mut kept = self.session.lock().await;
        if kept.as_ref().is_some_and(|s| s.grant.token == token) {
            *kept = None;
        }
    }

    /// Sends a call with the token; a 401 renews the token once and sends it again.
    /// Returns the answer whatever its status.
    async fn send(&self, call: &Call<'_>) -> Result<Response, Error> {
        let mut renewed = false;
        loop {
            let session = self.session().await?;
            let request = self.request(call, &session.grant)?;
            let response = self.http.send(request, call.url).await?;
            if response.status().as_u16() != 401 || renewed {
                return Ok(response);
            }
            tracing::debug!("{}: token refused (HTTP 401), renewing it", call.url);
            self.forget(&session.grant.token).await;
            renewed = true;
        }
    }

    fn request(&self, call: &Call<'_>, grant: &Grant) -> Result<web::Request, Error> {
        let mut uri = format!("{}/{}", grant.storage_url, encode(&self.container, false));
        if let Some(key) = call.key {
            uri.push('/');
            uri.push_str(&encode(&format!("/{key}"), true));
        }
        uri.push_str(&query_string(&call.query));
        let mut request = ::http::Request::builder()
            .method(call.method.clone())
            .uri(uri)
            .header("x-auth-token", &grant.token);
        if let Some(offset) = call.range_from {
            request = request.header("range", format!("bytes={offset}-"));
        }
        request
            .body(Full::new(Bytes::new()))
            .map_err(|e| permanent(call.url, format!("cannot build the request: {e}")))
    }

    /// Sends a call; any non-2xx answer becomes an error for its URL. An object's 404 is
    /// "not found" only when the container is there (Swift answers both the same way).
    async fn checked(&self, call: &Call<'_>) -> Result<Response, Error> {
        let response = self.send(call).await?;
        if response.status().is_success() {
            if call.key.is_none() {
                self.container_exists
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = if call.method == ::http::Method::HEAD {
            Bytes::new()
        } else {
            web::read_document(response, call.url)
                .await
                .unwrap_or_default()
        };
        let listing = call.key.is_none();
        let err = classify(call.url, status, &swift_message(&body), listing);
        if matches!(err, Error::NotFound { .. }) && !self.container_is_there(call.url).await? {
            return Err(container_missing(call.url, status));
        }
        Err(err)
    }

    /// Whether the container exists (`HEAD` on it, once per process when it does).
    async fn container_is_there(&self, url: &str) -> Result<bool, Error> {
        use std::sync::atomic::Ordering;
        if self.container_exists.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let probe = Call {
            method: ::http::Method::HEAD,
            key: None,
            query: Vec::new(),
            range_from: None,
            url,
        };
        let response = self.send(&probe).await?;
        match response.status().as_u16() {
            200..=299 => {
                self.container_exists.store(true, Ordering::Relaxed);
                Ok(true)
            }
            404 => Ok(false),
            status => Err(classify(url, status, "", true)),
        }
    }

    async fn get_object(&self, key: &str, offset: Option<u64>) -> Result<ObjectReader, Error> {
        let url = self.url(key);
        let call = Call {
            method: ::http::Method::GET,
            key: Some(key),
            query: Vec::new(),
            range_from: offset,
            url: &url,
        };
        let response = self.checked(&call).await?;
        web::object_reader(response, offset, url)
    }

    /// One listing page (JSON) under the logical `prefix`, after `marker` (a name).
    async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        marker: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, Error> {
        let url = self.url(prefix);
        let mut query = vec![
            ("format", "json".to_string()),
            ("limit", limit.to_string()),
            ("prefix", format!("/{prefix}")),
        ];
        if let Some(delimiter) = delimiter {
            query.push(("delimiter", delimiter.to_string()));
        }
        if let Some(marker) = marker {
            query.push(("marker", marker.to_string()));
        }
        let call = Call {
            method: ::http::Method::GET,
            key: None,
            query,
            range_from: None,
            url: &url,
        };
        let response = self.checked(&call).await?;
        let body = web::read_document(response, &url).await?;
        if body.is_empty() {
            // An empty container may answer 204 with no body.
            return Ok(Vec::new());
        }
        serde_json::from_slice(&body)
            .map_err(|e| permanent(&url, format!("unreadable listing: {e}")))
    }

    /// Authenticates with the configured protocol.
    async fn authenticate(&self) -> Result<Grant, Error> {
        match self.auth.version {
            AuthVersion::V1 => self.authenticate_v1().await,
            AuthVersion::V2 | AuthVersion::V3 => self.authenticate_keystone().await,
        }
    }

    /// v1: the user and key in headers; the token and storage URL come back in headers.
    async fn authenticate_v1(&self) -> Result<Grant, Error> {
        let url = &self.auth.auth_url;
        let request = ::http::Request::get(url.as_str())
            .header("x-auth-user", self.auth.user.as_deref().unwrap_or_default())
            .header("x-auth-key", &self.auth.password)
            .body(Full::new(Bytes::new()))
            .map_err(|e| permanent(url, format!("cannot build the request: {e}")))?;
        let response = self.auth_send(request).await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = web::read_document(response, url).await.unwrap_or_default();
            return Err(auth_refused(url, status, &swift_message(&body)));
        }
        let header = |name| web::header(&response, name).map(str::to_string);
        let (Some(storage_url), Some(token)) = (header("x-storage-url"), header("x-auth-token"))
        else {
            return Err(permanent(
                url,
                "cannot authenticate: the answer has no X-Storage-Url or X-Auth-Token (is SWIFT_AUTHURL a v1 auth URL?)".into(),
            ));
        };
        let expires = header("x-auth-token-expires")
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|secs| SystemTime::now() + Duration::from_secs(secs));
        Ok(Grant {
            token,
            storage_url: storage_url.trim_end_matches('/').to_string(),
            expires,
        })
    }

    /// Keystone v2 or v3: a JSON password request; the token and catalog in the answer.
    async fn authenticate_keystone(&self) -> Result<Grant, Error> {
        let (uri, body) = match self.auth.version {
            AuthVersion::V3 => (
                keystone::v3_url(&self.auth.auth_url),
                keystone::v3_request(&self.auth),
            ),
            _ => (
                keystone::v2_url(&self.auth.auth_url),
                keystone::v2_request(&self.auth),
            ),
        };
        let request = ::http::Request::post(uri.as_str())
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| permanent(&uri, format!("cannot build the request: {e}")))?;
        let response = self.auth_send(request).await?;
        let status = response.status().as_u16();
        let subject = web::header(&response, "x-subject-token").map(str::to_string);
        let body = web::read_document(response, &uri).await?;
        if !(200..300).contains(&status) {
            let message = keystone::error_message(&body).unwrap_or_else(|| swift_message(&body));
            return Err(auth_refused(&uri, status, &message));
        }
        let region = self.auth.region.as_deref();
        let endpoint_type = &self.auth.endpoint_type;
        let parsed = match self.auth.version {
            AuthVersion::V3 => keystone::parse_v3(subject.as_deref(), &body, region, endpoint_type),
            _ => keystone::parse_v2(&body, region, endpoint_type),
        };
        parsed.map_err(|detail| permanent(&uri, format!("cannot authenticate: {detail}")))
    }

    /// Sends an authentication request; failures below HTTP say it was authentication.
    async fn auth_send(&self, request: web::Request) -> Result<Response, Error> {
        let url = request.uri().to_string();
        self.http
            .send(request, &url)
            .await
            .map_err(|e| e.explained("cannot authenticate"))
    }

    /// A listed object as wale sees it: its logical key (the leading `/` removed), or
    /// `None` for a name outside WAL-E's layout or `prefix`.
    fn object_meta(entry: &Entry, prefix: &str) -> Option<ObjectMeta> {
        let key = entry.name.as_deref()?.strip_prefix('/')?;
        if !key.starts_with(prefix) {
            return None;
        }
        let text = entry.last_modified.clone().unwrap_or_default();
        Some(ObjectMeta {
            key: key.to_string(),
            size: entry.bytes.unwrap_or(0),
            modified: swift_time(&text).unwrap_or(UNIX_EPOCH),
            last_modified_text: text,
        })
    }
}

/// One entry of a JSON listing: an object, or (with a delimiter) a `subdir`.
#[derive(Deserialize)]
struct Entry {
    name: Option<String>,
    bytes: Option<u64>,
    last_modified: Option<String>,
    subdir: Option<String>,
}

impl Entry {
    /// The name the next page starts after.
    fn marker(&self) -> Option<&str> {
        self.name.as_deref().or(self.subdir.as_deref())
    }
}

impl Storage for SwiftStore {
    async fn get(&self, key: &str) -> Result<ObjectReader, Error> {
        self.get_object(key, None).await
    }

    async fn get_range(&self, key: &str, offset: u64) -> Result<ObjectReader, Error> {
        self.get_object(key, Some(offset)).await
    }

    async fn list(&self, prefix: &str, delimiter: Option<&str>) -> Result<Listing, Error> {
        let mut listing = Listing::default();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .list_page(prefix, delimiter, marker.as_deref(), PAGE_LIMIT)
                .await?;
            listing
                .objects
                .extend(page.iter().filter_map(|e| Self::object_meta(e, prefix)));
            listing.common_prefixes.extend(
                page.iter()
                    .filter_map(|e| Some(e.subdir.as_deref()?.strip_prefix('/')?.to_string())),
            );
            if page.len() < PAGE_LIMIT {
                break;
            }
            marker = page.last().and_then(Entry::marker).map(str::to_string);
        }
        Ok(listing.sorted())
    }

    async fn list_after(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, Error> {
        let limit = limit.max(1);
        let mut marker = (start_after > prefix).then(|| format!("/{start_after}"));
        let mut objects = Vec::new();
        loop {
            let asked = limit.min(PAGE_LIMIT);
            let page = self
                .list_page(prefix, Some("/"), marker.as_deref(), asked)
                .await?;
            objects.extend(
                page.iter()
                    .filter_map(|e| Self::object_meta(e, prefix))
                    .filter(|meta| meta.key.as_str() > start_after),
            );
            if page.len() < asked || objects.len() >= limit {
                break;
            }
            marker = page.last().and_then(Entry::marker).map(str::to_string);
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        objects.truncate(limit);
        Ok(objects)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, Error> {
        let url = self.url(key);
        let call = Call {
            method: ::http::Method::HEAD,
            key: Some(key),
            query: Vec::new(),
            range_from: None,
            url: &url,
        };
        let response = self.checked(&call).await?;
        // X-Timestamp is the time the listing shows (to the microsecond); Last-Modified
        // only has whole seconds.
        let modified = web::header(&response, "x-timestamp")
            .and_then(x_timestamp)
            .or_else(|| {
                web::header(&response, "last-modified")
                    .and_then(|t| httpdate::parse_http_date(t).ok())
            })
            .unwrap_or(UNIX_EPOCH);
        Ok(ObjectMeta {
            key: key.to_string(),
            size: web::content_length(&response).unwrap_or(0),
            last_modified_text: swift_time_text(modified),
            modified,
        })
    }

    fn url(&self, key: &str) -> String {
        format!("swift://{}/{key}", self.container)
    }
}

fn permanent(url: &str, detail: String) -> Error {
    Error::Permanent {
        url: url.to_string(),
        detail,
    }
}

/// A container that is not there: a configuration error, never "not found".
fn container_missing(url: &str, status: u16) -> Error {
    permanent(
        url,
        format!("HTTP {status} (the container does not exist; check WALE_SWIFT_PREFIX)"),
    )
}

/// Sorts an error answer of the object API. A listing's 404 is a missing container.
fn classify(url: &str, status: u16, message: &str, listing: bool) -> Error {
    let described = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {message}")
    };
    let url = url.to_string();
    match status {
        404 if listing => container_missing(&url, status),
        404 => Error::NotFound { url },
        401 | 403 => Error::AccessDenied {
            url,
            detail: format!(
                "{described} (check SWIFT_USER, SWIFT_PASSWORD and the account's rights)"
            ),
        },
        // 498 is Swift's rate limiting.
        408 | 429 | 498 | 500..=599 => Error::Transient {
            url,
            detail: described,
        },
        _ => Error::Permanent {
            url,
            detail: described,
        },
    }
}

/// Sorts a refused authentication: bad credentials are refused (never retried: WAL-E
/// retried a wrong password forever), an unavailable identity service may come back.
fn auth_refused(url: &str, status: u16, message: &str) -> Error {
    let described = if message.is_empty() {
        format!("cannot authenticate: HTTP {status}")
    } else {
        format!("cannot authenticate: HTTP {status}: {message}")
    };
    let url = url.to_string();
    match status {
        401 | 403 => Error::AccessDenied {
            url,
            detail: format!("{described} (check SWIFT_USER and SWIFT_PASSWORD)"),
        },
        408 | 429 | 498 | 500..=599 => Error::Transient {
            url,
            detail: described,
        },
        404 => permanent(
            &url,
            format!("{described} (check SWIFT_AUTHURL and SWIFT_AUTH_VERSION)"),
        ),
        _ => permanent(&url, described),
    }
}

/// The text of an error answer: Swift's small HTML page without its tags
/// (`Not Found The resource could not be found.`), at most 200 characters.
fn swift_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut plain = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => {
                in_tag = true;
                plain.push(' ');
            }
            '>' => in_tag = false,
            _ if !in_tag => plain.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = plain.split_whitespace().collect();
    words.join(" ").chars().take(200).collect()
}

/// A listing's `last_modified` (`2026-12-07T02:05:22.443620`, UTC without a zone).
fn swift_time(text: &str) -> Option<SystemTime> {
    parse_rfc3339_utc(&format!("{text}Z"))
}

/// A time as Swift's listings print it: microseconds always, no zone.
fn swift_time_text(t: SystemTime) -> String {
    let (secs, nanos) = unix_parts(t);
    let (y, mo, d, h, mi, s) = crate::time::civil_utc(secs);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}",
        nanos / 1000
    )
}

/// Swift's `X-Timestamp` (`1796609122.44362`, seconds since the epoch).
fn x_timestamp(text: &str) -> Option<SystemTime> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let secs: u64 = whole.parse().ok()?;
    let digits: String = fraction.chars().take(9).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = if digits.is_empty() {
        0
    } else {
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    // Swift keeps 5 decimals; the listing shows them rounded to microseconds.
    let micros = (nanos + 500) / 1000;
    Some(UNIX_EPOCH + Duration::new(secs, 0) + Duration::from_micros(u64::from(micros)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_like_the_other_stores() {
        let url = "swift://c/p/wal_005/x.lzo";
        let page = b"<html><h1>Not Found</h1><p>The resource could not be found.</p></html>";
        let message = swift_message(page);
        assert_eq!(message, "Not Found The resource could not be found.");
        assert!(matches!(
            classify(url, 404, &message, false),
            Error::NotFound { .. }
        ));
        let listing = classify(url, 404, &message, true);
        assert!(
            matches!(listing, Error::Permanent { .. })
                && listing.to_string().contains("WALE_SWIFT_PREFIX"),
            "{listing}"
        );
        for status in [401, 403] {
            let err = classify(url, status, "", false);
            assert!(matches!(err, Error::AccessDenied { .. }), "{err}");
        }
        for status in [408, 429, 498, 500, 503] {
            assert!(classify(url, status, "", false).is_retryable(), "{status}");
        }
        assert!(!classify(url, 416, "", false).is_retryable());
        let auth = "http://127.0.0.1:8080/auth/v1.0";
        let refused = auth_refused(auth, 401, "Unauthorized");
        assert!(matches!(refused, Error::AccessDenied { .. }));
        assert!(refused.to_string().contains("SWIFT_PASSWORD"), "{refused}");
        assert!(auth_refused(auth, 503, "").is_retryable());
        assert!(
            auth_refused(auth, 404, "")
                .to_string()
                .contains("SWIFT_AUTHURL")
        );
    }

    #[test]
    fn times_read_and_print_as_swift_lists_them() {
        let listed = swift_time("2026-12-07T02:05:22.443620").unwrap();
        assert_eq!(unix_parts(listed), (1_796_609_122, 443_620_000));
        assert_eq!(swift_time_text(listed), "2026-12-07T02:05:22.443620");
        let headed = x_timestamp("1796609122.44362").unwrap();
        assert_eq!(swift_time_text(headed), "2026-12-07T02:05:22.443620");
        assert_eq!(headed, listed);
        assert_eq!(
            x_timestamp("1796609122").map(unix_parts),
            Some((1_796_609_122, 0))
        );
        assert!(x_timestamp("x.1").is_none() && x_timestamp("1.x").is_none());
        assert!(swift_time("yesterday").is_none());
    }

    #[test]
    fn listing_entries_become_logical_keys() {
        let page: Vec<Entry> = serde_json::from_str(
            r#"[{"subdir": "/p/wal_005/"},
                {"bytes": 6, "hash": "b1946ac92492d2347c6235b4d2611184", "name": "/p/x.lzo",
                 "content_type": "application/octet-stream", "last_modified": "2026-12-07T02:05:22.443620"},
                {"bytes": 1, "name": "no-slash", "last_modified": "2026-12-07T02:05:22.443620"}]"#,
        )
        .unwrap();
        assert_eq!(page[0].marker(), Some("/p/wal_005/"));
        assert!(SwiftStore::object_meta(&page[0], "p/").is_none());
        let meta = SwiftStore::object_meta(&page[1], "p/").unwrap();
        assert_eq!((meta.key.as_str(), meta.size), ("p/x.lzo", 6));
        assert_eq!(meta.last_modified_text, "2026-12-07T02:05:22.443620");
        assert!(SwiftStore::object_meta(&page[1], "q/").is_none());
        assert!(SwiftStore::object_meta(&page[2], "").is_none());
    }
}
