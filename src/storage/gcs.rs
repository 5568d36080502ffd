//! The Google Cloud Storage backend, on the JSON API.
//!
//! WAL-E stored every object under `gs://bucket/path` as `"/" + logical key`: the names
//! keep a leading slash (`/path/wal_005/…`). Clients that normalise names cannot see
//! them; this one percent-encodes the whole name into one path segment, so they are
//! reached as they are. Tokens come from the configured key file (a JWT signed here, or a
//! refresh token) or, only when asked for, the Compute Engine metadata server; they are
//! kept for the process and renewed a minute before they expire.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;

use super::web::{self, HttpClient, Request, Response, encode, query_string};
use super::{
    Error, Listing, ObjectMeta, ObjectReader, Storage, parse_rfc3339_utc, python_utc_text,
};
use crate::config::{GcsConfig, GcsCredentials};

/// What wale asks for: reading objects, nothing more.
const READ_ONLY_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";
/// A token is renewed when it has less than this left.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// A bucket and the client that reads it.
pub struct GcsStore {
    http: HttpClient,
    endpoint: String,
    bucket: String,
    tokens: Option<TokenSource>,
}

impl GcsStore {
    /// Builds the client and checks the private key; nothing is sent until a command asks.
    pub fn connect(config: &GcsConfig) -> Result<GcsStore, Error> {
        let tokens = TokenSource::new(&config.credentials)?;
        let tls = config.endpoint.starts_with("https://")
            || tokens.as_ref().is_some_and(TokenSource::uses_tls);
        Ok(GcsStore {
            http: HttpClient::new(tls),
            endpoint: config.endpoint.clone(),
            bucket: config.bucket.clone(),
            tokens,
        })
    }

    /// The API URL of an object (WAL-E's name: the key with a leading `/`).
    fn object_api(&self, key: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            encode(&self.bucket, false),
            encode(&format!("/{key}"), false)
        )
    }

    /// Sends a GET with the bearer token, whatever the answer's status.
    async fn exchange(
        &self,
        uri: &str,
        range_from: Option<u64>,
        url: &str,
    ) -> Result<Response, Error> {
        let mut request = ::http::Request::get(uri);
        if let Some(tokens) = &self.tokens {
            let token = tokens.token(&self.http).await?;
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(offset) = range_from {
            request = request.header("range", format!("bytes={offset}-"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| permanent(url, format!("cannot build the request: {e}")))?;
        self.http.send(request, url).await
    }

    /// Sends a GET; any non-2xx answer becomes an error for `url`. An object's 404 is
    /// "not found" only when the bucket is there: a 404 that does not say which is missing
    /// (an emulator's empty answer) is settled with a one-name listing of the bucket.
    async fn get_api(
        &self,
        uri: &str,
        range_from: Option<u64>,
        url: &str,
        listing: bool,
    ) -> Result<Response, Error> {
        let response = self.exchange(uri, range_from, url).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = web::read_document(response, url).await.unwrap_or_default();
        let err = classify(url, status, &error_message(&body), listing);
        if !matches!(err, Error::NotFound { .. }) || says_no_such_object(&body) {
            return Err(err);
        }
        let probe = format!(
            "{}/storage/v1/b/{}/o?maxResults=1",
            self.endpoint,
            encode(&self.bucket, false)
        );
        let bucket = self.exchange(&probe, None, url).await?;
        match bucket.status().as_u16() {
            200..=299 => Err(err),
            status => {
                let body = web::read_document(bucket, url).await.unwrap_or_default();
                Err(classify(url, status, &error_message(&body), true))
            }
        }
    }

    async fn get_object(&self, key: &str, offset: Option<u64>) -> Result<ObjectReader, Error> {
        let url = self.url(key);
        let uri = format!("{}?alt=media", self.object_api(key));
        let response = self.get_api(&uri, offset, &url, false).await?;
        web::object_reader(response, offset, url)
    }

    /// One page of a listing under the logical `prefix`.
    async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        start_offset: Option<&str>,
        page_token: Option<String>,
        max_results: Option<usize>,
    ) -> Result<ListPage, Error> {
        let url = self.url(prefix);
        let mut query = vec![("prefix", format!("/{prefix}"))];
        if let Some(delimiter) = delimiter {
            query.push(("delimiter", delimiter.to_string()));
        }
        if let Some(start) = start_offset {
            query.push(("startOffset", format!("/{start}")));
        }
        if let Some(max) = max_results {
            query.push(("maxResults", max.to_string()));
        }
        if let Some(token) = page_token {
            query.push(("pageToken", token));
        }
        let uri = format!(
            "{}/storage/v1/b/{}/o{}",
            self.endpoint,
            encode(&self.bucket, false),
            query_string(&query)
        );
        let response = self.get_api(&uri, None, &url, true).await?;
        let body = web::read_document(response, &url).await?;
        let page: ListPage = serde_json::from_slice(&body)
            .map_err(|e| permanent(&url, format!("unreadable listing: {e}")))?;
        Ok(page)
    }

    /// A listed or described object as wale sees it: its logical key (the leading `/`
    /// removed), or `None` for a name outside WAL-E's layout.
    fn object_meta(&self, object: &ApiObject, prefix: &str) -> Option<ObjectMeta> {
        let key = object.name.strip_prefix('/')?;
        if !key.starts_with(prefix) {
            return None;
        }
        let modified = object
            .updated
            .as_deref()
            .and_then(parse_rfc3339_utc)
            .unwrap_or(UNIX_EPOCH);
        Some(ObjectMeta {
            key: key.to_string(),
            size: object
                .size
                .as_deref()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            last_modified_text: python_utc_text(modified, false),
            modified,
        })
    }
}

impl Storage for GcsStore {
    async fn get(&self, key: &str) -> Result<ObjectReader, Error> {
        self.get_object(key, None).await
    }

    async fn get_range(&self, key: &str, offset: u64) -> Result<ObjectReader, Error> {
        self.get_object(key, Some(offset)).await
    }

    async fn list(&self, prefix: &str, delimiter: Option<&str>) -> Result<Listing, Error> {
        let mut listing = Listing::default();
        let mut token = None;
        loop {
            let page = self.list_page(prefix, delimiter, None, token, None).await?;
            listing.objects.extend(
                page.items
                    .iter()
                    .filter_map(|object| self.object_meta(object, prefix)),
            );
            listing.common_prefixes.extend(
                page.prefixes
                    .iter()
                    .filter_map(|p| Some(p.strip_prefix('/')?.to_string())),
            );
            token = page.next_page_token.filter(|t| !t.is_empty());
            if token.is_none() {
                break;
            }
        }
        Ok(listing.sorted())
    }

    async fn list_after(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, Error> {
        // startOffset is inclusive, and a server may ignore it or the page size: both are
        // applied here as well.
        let start = (start_after > prefix).then_some(start_after);
        let mut objects = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .list_page(
                    prefix,
                    Some("/"),
                    start,
                    token,
                    Some(limit.clamp(1, 1000) + 1),
                )
                .await?;
            objects.extend(
                page.items
                    .iter()
                    .filter_map(|object| self.object_meta(object, prefix))
                    .filter(|meta| meta.key.as_str() > start_after),
            );
            token = page.next_page_token.filter(|t| !t.is_empty());
            if token.is_none() || objects.len() >= limit {
                break;
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        objects.truncate(limit);
        Ok(objects)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, Error> {
        let url = self.url(key);
        let response = self
            .get_api(&self.object_api(key), None, &url, false)
            .await?;
        let body = web::read_document(response, &url).await?;
        let object: ApiObject = serde_json::from_slice(&body)
            .map_err(|e| permanent(&url, format!("unreadable object metadata: {e}")))?;
        self.object_meta(&object, "")
            .ok_or_else(|| permanent(&url, format!("unexpected object name {:?}", object.name)))
    }

    fn url(&self, key: &str) -> String {
        format!("gs://{}/{key}", self.bucket)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListPage {
    #[serde(default)]
    items: Vec<ApiObject>,
    #[serde(default)]
    prefixes: Vec<String>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct ApiObject {
    name: String,
    /// The API sends sizes as decimal strings.
    size: Option<String>,
    updated: Option<String>,
}

fn permanent(url: &str, detail: String) -> Error {
    Error::Permanent {
        url: url.to_string(),
        detail,
    }
}

/// The message of an error answer: the JSON API's `error.message`, or the first line of
/// a plain-text answer (media downloads answer `No such object: bucket/name`).
fn error_message(body: &[u8]) -> String {
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) {
        return doc
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_string();
    }
    let text = String::from_utf8_lossy(body);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    line.chars().take(200).collect()
}

/// Whether an answer says positively that the object (not the bucket) is missing.
fn says_no_such_object(body: &[u8]) -> bool {
    error_message(body).starts_with("No such object")
}

/// Sorts an error answer. A 404 is "not found" only for an object: a listing's 404, or
/// one that says the bucket is missing, is a configuration error.
fn classify(url: &str, status: u16, message: &str, listing: bool) -> Error {
    let described = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {message}")
    };
    let url = url.to_string();
    let bucket_missing = message
        .to_ascii_lowercase()
        .contains("bucket does not exist");
    match status {
        404 if listing || bucket_missing => Error::Permanent {
            url,
            detail: format!("{described} (the bucket does not exist; check WALE_GS_PREFIX)"),
        },
        404 => Error::NotFound { url },
        401 | 403 => Error::AccessDenied {
            url,
            detail: described,
        },
        408 | 429 | 500..=599 => Error::Transient {
            url,
            detail: described,
        },
        _ => Error::Permanent {
            url,
            detail: described,
        },
    }
}

/// Issues and keeps OAuth access tokens for the configured credentials.
struct TokenSource {
    grant: Grant,
    /// The token and when to stop using it.
    cached: tokio::sync::Mutex<Option<(String, Instant)>>,
}

enum Grant {
    /// A JWT signed with a service account's key, exchanged at `token_uri`.
    Jwt {
        client_email: String,
        key: aws_lc_rs::signature::RsaKeyPair,
        token_uri: String,
    },
    /// A user's refresh token, exchanged at `token_uri`.
    Refresh { form: String, token_uri: String },
    /// The metadata server's token for the instance's service account.
    Metadata { uri: String },
}

impl TokenSource {
    /// The token source for `credentials`; `None` when requests go unauthenticated.
    fn new(credentials: &GcsCredentials) -> Result<Option<TokenSource>, Error> {
        let grant = match credentials {
            GcsCredentials::ServiceAccount {
                path,
                client_email,
                private_key_pem,
                token_uri,
            } => Grant::Jwt {
                client_email: client_email.clone(),
                key: parse_private_key(private_key_pem).map_err(|reason| Error::Permanent {
                    url: path.display().to_string(),
                    detail: format!("the service account's private key {reason}"),
                })?,
                token_uri: token_uri.clone(),
            },
            GcsCredentials::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
                ..
            } => Grant::Refresh {
                form: format!(
                    "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
                    encode(client_id, false),
                    encode(client_secret, false),
                    encode(refresh_token, false)
                ),
                token_uri: token_uri.clone(),
            },
            GcsCredentials::InstanceMetadata { host } => Grant::Metadata {
                uri: format!(
                    "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
                ),
            },
            GcsCredentials::Anonymous => return Ok(None),
        };
        Ok(Some(TokenSource {
            grant,
            cached: tokio::sync::Mutex::new(None),
        }))
    }

    /// Whether tokens come from an `https://` address.
    fn uses_tls(&self) -> bool {
        match &self.grant {
            Grant::Jwt { token_uri, .. } | Grant::Refresh { token_uri, .. } => {
                token_uri.starts_with("https://")
            }
            Grant::Metadata { .. } => false,
        }
    }

    /// A token valid for at least a minute more, asked for only when needed.
    async fn token(&self, http: &HttpClient) -> Result<String, Error> {
        let mut cached = self.cached.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch(http).await?;
        let until = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    async fn fetch(&self, http: &HttpClient) -> Result<(String, Duration), Error> {
        let (request, where_) = match &self.grant {
            Grant::Jwt {
                client_email,
                key,
                token_uri,
            } => {
                let jwt = signed_jwt(client_email, token_uri, key, SystemTime::now())
                    .map_err(|e| permanent(token_uri, e.to_string()))?;
                let form = format!(
                    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}"
                );
                (form_post(token_uri, form), token_uri)
            }
            Grant::Refresh { form, token_uri } => (form_post(token_uri, form.clone()), token_uri),
            Grant::Metadata { uri } => (
                ::http::Request::get(uri.as_str())
                    .header("metadata-flavor", "Google")
                    .body(Full::new(Bytes::new())),
                uri,
            ),
        };
        let request: Request =
            request.map_err(|e| permanent(where_, format!("cannot build the request: {e}")))?;
        let response = http
            .send(request, where_)
            .await
            .map_err(|e| e.explained("cannot get an access token"))?;
        let status = response.status().as_u16();
        let body = web::read_document(response, where_).await?;
        if !(200..300).contains(&status) {
            let reason = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|doc| {
                    let text = doc.get("error_description").or_else(|| doc.get("error"))?;
                    Some(
                        text.as_str()
                            .map_or_else(|| text.to_string(), str::to_string),
                    )
                })
                .unwrap_or_default();
            let detail = format!("cannot get an access token: HTTP {status} {reason}");
            return Err(match status {
                408 | 429 | 500..=599 => Error::Transient {
                    url: where_.clone(),
                    detail,
                },
                _ => Error::AccessDenied {
                    url: where_.clone(),
                    detail: detail.trim_end().to_string(),
                },
            });
        }
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            expires_in: Option<u64>,
        }
        let token: Token = serde_json::from_slice(&body)
            .map_err(|e| permanent(where_, format!("unreadable token response: {e}")))?;
        Ok((
            token.access_token,
            Duration::from_secs(token.expires_in.unwrap_or(3600)),
        ))
    }
}

fn form_post(uri: &str, form: String) -> Result<Request, ::http::Error> {
    ::http::Request::post(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))
}

/// Why a service account's private key is of no use: what it is not (messages follow
/// "the service account's private key"), or that it could not sign.
#[derive(Debug, thiserror::Error)]
enum PrivateKeyError {
    /// Not base64 between PEM lines.
    #[error("is not PEM (base64 between -----BEGIN/END lines)")]
    NotPem,
    /// Not an RSA key in PKCS#8 form.
    #[error("is not an RSA key in PKCS#8 form: {0}")]
    NotRsaPkcs8(aws_lc_rs::error::KeyRejected),
    /// Signing the token request failed.
    #[error("cannot sign the token request with the private key")]
    CannotSign,
}

/// The PKCS#8 key inside a PEM block (`-----BEGIN PRIVATE KEY-----`).
fn parse_private_key(pem: &str) -> Result<aws_lc_rs::signature::RsaKeyPair, PrivateKeyError> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("-----"))
        .collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body)
        .map_err(|_| PrivateKeyError::NotPem)?;
    aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der).map_err(PrivateKeyError::NotRsaPkcs8)
}

/// A JWT asking `audience` for a read-only token for `issuer`, signed RS256.
fn signed_jwt(
    issuer: &str,
    audience: &str,
    key: &aws_lc_rs::signature::RsaKeyPair,
    now: SystemTime,
) -> Result<String, PrivateKeyError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let issued = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": issuer,
        "scope": READ_ONLY_SCOPE,
        "aud": audience,
        "iat": issued,
        "exp": issued + 3600,
    });
    let signed = format!("{header}.{}", b64.encode(claims.to_string()));
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .map_err(|_| PrivateKeyError::CannotSign)?;
    Ok(format!("{signed}.{}", b64.encode(signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_what_is_missing() {
        let url = "gs://b/p/wal_005/x.lzo";
        let classify =
            |status, body: &[u8], listing| classify(url, status, &error_message(body), listing);
        assert!(matches!(classify(404, b"", false), Error::NotFound { .. }));
        assert!(says_no_such_object(b"No such object: b/p/wal_005/x.lzo\n"));
        assert!(!says_no_such_object(b""));
        let no_bucket =
            br#"{"error":{"code":404,"message":"The specified bucket does not exist."}}"#;
        let err = classify(404, no_bucket, false);
        assert!(matches!(err, Error::Permanent { .. }), "{err}");
        assert!(err.to_string().contains("WALE_GS_PREFIX"), "{err}");
        let plain = classify(404, b"The specified bucket does not exist.", false);
        assert!(matches!(plain, Error::Permanent { .. }), "{plain}");
        assert!(matches!(classify(404, b"", true), Error::Permanent { .. }));
        let denied =
            br#"{"error":{"code":403,"message":"x@y does not have storage.objects.get access"}}"#;
        let err = classify(403, denied, false);
        assert!(matches!(err, Error::AccessDenied { .. }), "{err}");
        assert!(err.to_string().contains("storage.objects.get"), "{err}");
        assert!(classify(503, b"", false).is_retryable());
        assert!(classify(429, b"", false).is_retryable());
        assert!(!classify(400, b"", false).is_retryable());
    }
}
