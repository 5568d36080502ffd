//! Keystone, OpenStack's identity service, as far as Swift needs it: the password request
//! of v2.0 (`POST …/tokens`) and v3 (`POST …/auth/tokens`), and the token and object-store
//! endpoint in its answer (the service catalog, filtered by region and endpoint type as
//! swiftclient does). Pure: requests are built and answers parsed here, sent elsewhere.

use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::SwiftAuth;
use crate::storage::parse_rfc3339_utc;

/// What authentication yields: a token, the storage URL it is for, and when it expires
/// (when the server said).
#[derive(Clone)]
pub(super) struct Grant {
    /// The token for `X-Auth-Token`.
    pub(super) token: String,
    /// The account's URL (`…/v1/AUTH_<project>`), without a trailing `/`.
    pub(super) storage_url: String,
    /// The token's end of life.
    pub(super) expires: Option<SystemTime>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("token", &"<redacted>")
            .field("storage_url", &self.storage_url)
            .field("expires", &self.expires)
            .finish()
    }
}

/// The service type of Swift in a catalog.
const OBJECT_STORE: &str = "object-store";

/// Where a v2.0 password request goes: `{auth URL}/tokens`.
pub(super) fn v2_url(auth_url: &str) -> String {
    if auth_url.ends_with("/tokens") {
        auth_url.to_string()
    } else {
        format!("{auth_url}/tokens")
    }
}

/// Where a v3 password request goes: `{auth URL}/auth/tokens`.
pub(super) fn v3_url(auth_url: &str) -> String {
    if auth_url.ends_with("/auth/tokens") {
        auth_url.to_string()
    } else {
        format!("{auth_url}/auth/tokens")
    }
}

/// The v2.0 request body: the user's name (or id) and password, scoped to the tenant.
pub(super) fn v2_request(auth: &SwiftAuth) -> Value {
    let mut credentials = json!({ "password": auth.password });
    match (&auth.user, &auth.user_id) {
        (Some(name), _) => credentials["username"] = json!(name),
        (None, Some(id)) => credentials["userId"] = json!(id),
        (None, None) => {}
    }
    let mut body = json!({ "auth": { "passwordCredentials": credentials } });
    match (&auth.tenant_id, &auth.tenant) {
        (Some(id), _) => body["auth"]["tenantId"] = json!(id),
        (None, Some(name)) => body["auth"]["tenantName"] = json!(name),
        (None, None) => {}
    }
    body
}

/// `{"id": …}` or `{"name": …}` (id first, as keystoneauth does), if either is set.
fn id_or_name(id: &Option<String>, name: &Option<String>) -> Option<Value> {
    match (id, name) {
        (Some(id), _) => Some(json!({ "id": id })),
        (None, Some(name)) => Some(json!({ "name": name })),
        (None, None) => None,
    }
}

/// The v3 request body: the password method for the user (by id, or by name in its
/// domain), scoped to the project (`SWIFT_PROJECT_*`, else `SWIFT_TENANT*`), else to the
/// domain (`SWIFT_DOMAIN_*`).
pub(super) fn v3_request(auth: &SwiftAuth) -> Value {
    let mut user = json!({ "password": auth.password });
    if let Some(id) = &auth.user_id {
        user["id"] = json!(id);
    } else if let Some(name) = &auth.user {
        user["name"] = json!(name);
        if let Some(domain) = id_or_name(&auth.user_domain_id, &auth.user_domain_name) {
            user["domain"] = domain;
        }
    }
    let mut body = json!({
        "auth": { "identity": { "methods": ["password"], "password": { "user": user } } }
    });
    let project_id = auth.project_id.clone().or_else(|| auth.tenant_id.clone());
    let project_name = auth.project_name.clone().or_else(|| auth.tenant.clone());
    if let Some(mut project) = id_or_name(&project_id, &project_name) {
        if project_id.is_none()
            && let Some(domain) = id_or_name(&auth.project_domain_id, &auth.project_domain_name)
        {
            project["domain"] = domain;
        }
        body["auth"]["scope"] = json!({ "project": project });
    } else if let Some(domain) = id_or_name(&auth.domain_id, &auth.domain_name) {
        body["auth"]["scope"] = json!({ "domain": domain });
    }
    body
}

/// A service in a catalog, with its endpoints: v2 and v3 differ only in how an endpoint
/// is written.
#[derive(Deserialize)]
struct Service<E> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "Vec::new")]
    endpoints: Vec<E>,
}

#[derive(Deserialize)]
struct V2Answer {
    access: V2Access,
}

#[derive(Deserialize)]
struct V2Access {
    token: V2Token,
    #[serde(rename = "serviceCatalog", default)]
    service_catalog: Vec<Service<serde_json::Map<String, Value>>>,
}

#[derive(Deserialize)]
struct V2Token {
    id: String,
    expires: Option<String>,
}

/// Why a Keystone answer gives no token for Swift.
#[derive(Debug, thiserror::Error)]
pub(super) enum AnswerError {
    /// Not the JSON of a token.
    #[error("unreadable Keystone {version} answer: {source}")]
    Unreadable {
        /// `v2` or `v3`.
        version: &'static str,
        /// What the JSON parser said.
        source: serde_json::Error,
    },
    /// A v3 answer without its token.
    #[error("the Keystone v3 answer has no X-Subject-Token header")]
    NoSubjectToken,
    /// No Swift in the catalog at all: the token is likely unscoped.
    #[error(
        "the service catalog has no object-store (Swift) service; is the token scoped to a project (SWIFT_TENANT, SWIFT_PROJECT_NAME…)?"
    )]
    NoObjectStore,
    /// Swift is there, but not in the region or of the endpoint type asked for.
    #[error(
        "the service catalog has no object-store endpoint of type {kind}{} (regions offered: {}; check SWIFT_REGION and SWIFT_ENDPOINT_TYPE)",
        .region.as_ref().map_or_else(String::new, |r| format!(" in region {r}")),
        .regions.join(", ")
    )]
    NoEndpoint {
        /// The endpoint type or interface asked for.
        kind: String,
        /// The region asked for.
        region: Option<String>,
        /// The regions of the object-store endpoints offered.
        regions: Vec<String>,
    },
}

/// The token and Swift endpoint in a v2.0 answer; `Err` says what is missing.
pub(super) fn parse_v2(
    body: &[u8],
    region: Option<&str>,
    endpoint_type: &str,
) -> Result<Grant, AnswerError> {
    let answer: V2Answer = read_answer(body, "v2")?;
    // v2 names the types `publicURL`, `internalURL`, `adminURL`; `public` is taken too.
    let key = if endpoint_type.ends_with("URL") {
        endpoint_type.to_string()
    } else {
        format!("{endpoint_type}URL")
    };
    let access = answer.access;
    grant(
        access.token.id,
        access.token.expires.as_deref(),
        &access.service_catalog,
        |endpoint| Offered {
            region_id: None,
            region: endpoint.get("region").and_then(Value::as_str),
            url: endpoint.get(&key).and_then(Value::as_str),
        },
        region,
        &key,
    )
}

#[derive(Deserialize)]
struct V3Answer {
    token: V3Token,
}

#[derive(Deserialize)]
struct V3Token {
    expires_at: Option<String>,
    #[serde(default)]
    catalog: Vec<Service<V3Endpoint>>,
}

#[derive(Deserialize)]
struct V3Endpoint {
    interface: String,
    url: String,
    region: Option<String>,
    region_id: Option<String>,
}

/// The Swift endpoint and expiry in a v3 answer, with the token Keystone sent in its
/// `X-Subject-Token` header; `Err` says what is missing.
pub(super) fn parse_v3(
    subject_token: Option<&str>,
    body: &[u8],
    region: Option<&str>,
    endpoint_type: &str,
) -> Result<Grant, AnswerError> {
    let token = subject_token
        .filter(|t| !t.is_empty())
        .ok_or(AnswerError::NoSubjectToken)?;
    let answer: V3Answer = read_answer(body, "v3")?;
    // v3 names the interfaces `public`, `internal`, `admin`; `publicURL` is taken too.
    let interface = endpoint_type.strip_suffix("URL").unwrap_or(endpoint_type);
    grant(
        token.to_string(),
        answer.token.expires_at.as_deref(),
        &answer.token.catalog,
        |endpoint| Offered {
            region_id: endpoint.region_id.as_deref(),
            region: endpoint.region.as_deref(),
            url: (endpoint.interface == interface).then_some(endpoint.url.as_str()),
        },
        region,
        interface,
    )
}

/// The answer's JSON, read as `T`.
fn read_answer<T: serde::de::DeserializeOwned>(
    body: &[u8],
    version: &'static str,
) -> Result<T, AnswerError> {
    serde_json::from_slice(body).map_err(|source| AnswerError::Unreadable { version, source })
}

/// An object-store endpoint as a v2 or v3 catalog offers it.
struct Offered<'a> {
    /// Its region's id (v3 only).
    region_id: Option<&'a str>,
    /// Its region's name.
    region: Option<&'a str>,
    /// Its URL of the endpoint type asked for, if it has one.
    url: Option<&'a str>,
}

/// What v2 and v3 answers share: `token` for the first object-store endpoint in `region`
/// (in any, when none is asked for) with a URL of type `kind`, as swiftclient chooses,
/// and the expiry Keystone gave; the error names the regions offered.
fn grant<'a, E>(
    token: String,
    expires: Option<&str>,
    catalog: &'a [Service<E>],
    offered: impl Fn(&'a E) -> Offered<'a>,
    region: Option<&str>,
    kind: &str,
) -> Result<Grant, AnswerError> {
    let endpoints = catalog
        .iter()
        .filter(|service| service.kind == OBJECT_STORE)
        .flat_map(|service| service.endpoints.iter())
        .map(offered);
    let mut regions = Vec::new();
    for endpoint in endpoints {
        regions.push(
            endpoint
                .region_id
                .or(endpoint.region)
                .unwrap_or("(none)")
                .to_string(),
        );
        let in_region = region.is_none_or(|wanted| {
            endpoint.region_id == Some(wanted) || endpoint.region == Some(wanted)
        });
        if let (true, Some(url)) = (in_region, endpoint.url) {
            return Ok(Grant {
                token,
                storage_url: url.trim_end_matches('/').to_string(),
                expires: expires.and_then(keystone_time),
            });
        }
    }
    Err(no_endpoint(kind, region, regions))
}

/// Keystone's times: `2026-12-08T02:05:22Z`, `2026-12-08T02:05:22.000000Z`, and v2's
/// older zone-less form (UTC).
fn keystone_time(text: &str) -> Option<SystemTime> {
    parse_rfc3339_utc(text).or_else(|| parse_rfc3339_utc(&format!("{text}Z")))
}

/// No object-store endpoint of type `kind` in `region` among those in `regions`.
fn no_endpoint(kind: &str, region: Option<&str>, regions: Vec<String>) -> AnswerError {
    if regions.is_empty() {
        return AnswerError::NoObjectStore;
    }
    AnswerError::NoEndpoint {
        kind: kind.to_string(),
        region: region.map(str::to_string),
        regions,
    }
}

/// The message of a Keystone error answer (`{"error": {"message": …}}`), if any.
pub(super) fn error_message(body: &[u8]) -> Option<String> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    Some(doc.get("error")?.get("message")?.as_str()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthVersion;

    const V2_ANSWER: &str = include_str!("testdata/keystone-v2-token.json");
    const V3_ANSWER: &str = include_str!("testdata/keystone-v3-token.json");

    fn auth(version: AuthVersion) -> SwiftAuth {
        SwiftAuth {
            auth_url: "https://keystone.example.com:5000/v3".into(),
            version,
            user: Some("alice".into()),
            password: "s3cret".into(),
            tenant: Some("archive".into()),
            tenant_id: None,
            region: None,
            endpoint_type: "publicURL".into(),
            user_id: None,
            user_domain_id: None,
            user_domain_name: Some("Default".into()),
            project_id: None,
            project_name: None,
            project_domain_id: Some("default".into()),
            project_domain_name: None,
            domain_id: None,
            domain_name: None,
        }
    }

    fn unix(t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn v2_token_and_endpoint_by_region_and_type() {
        let body = V2_ANSWER.as_bytes();
        let first = parse_v2(body, None, "publicURL").unwrap();
        assert_eq!(first.token, "gAAAAABlv2tokenxyz");
        assert_eq!(
            first.storage_url,
            "https://swift.region-one.example.com:8080/v1/AUTH_fc394f2ab2df4114bde39905f800dc57"
        );
        // 2026-12-08T02:05:22Z
        assert_eq!(unix(first.expires.unwrap()), 1_796_695_522);
        let two = parse_v2(body, Some("RegionTwo"), "internalURL").unwrap();
        assert_eq!(
            two.storage_url,
            "http://10.2.0.5:8080/v1/AUTH_fc394f2ab2df4114bde39905f800dc57"
        );
        let short_name = parse_v2(body, Some("RegionTwo"), "public").unwrap();
        assert!(
            short_name
                .storage_url
                .starts_with("https://swift.region-two")
        );
        let err = parse_v2(body, Some("RegionThree"), "publicURL")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("RegionThree") && err.contains("RegionOne, RegionTwo"),
            "{err}"
        );
        let unscoped = br#"{"access":{"token":{"id":"t","expires":"2026-12-08T02:05:22Z"},"serviceCatalog":[]}}"#;
        assert!(
            parse_v2(unscoped, None, "publicURL")
                .unwrap_err()
                .to_string()
                .contains("scoped")
        );
        assert!(parse_v2(b"<html>", None, "publicURL").is_err());
    }

    #[test]
    fn v3_token_from_the_header_and_endpoint_by_interface() {
        let body = V3_ANSWER.as_bytes();
        let grant = parse_v3(Some("gAAAAABlv3subject"), body, None, "publicURL").unwrap();
        assert_eq!(grant.token, "gAAAAABlv3subject");
        assert_eq!(
            grant.storage_url,
            "https://swift.region-one.example.com:8080/v1/AUTH_8538a3f13f9541b28c2620eb19065e45"
        );
        // 2026-12-08T02:05:22.000000Z
        assert_eq!(unix(grant.expires.unwrap()), 1_796_695_522);
        let internal = parse_v3(Some("t"), body, Some("RegionTwo"), "internalURL").unwrap();
        assert_eq!(
            internal.storage_url,
            "http://10.2.0.5:8080/v1/AUTH_8538a3f13f9541b28c2620eb19065e45"
        );
        let admin = parse_v3(Some("t"), body, Some("RegionOne"), "admin").unwrap();
        assert_eq!(admin.storage_url, "http://10.1.0.5:8080/v1");
        let err = parse_v3(Some("t"), body, Some("RegionThree"), "publicURL")
            .unwrap_err()
            .to_string();
        assert!(err.contains("public in region RegionThree"), "{err}");
        assert!(
            parse_v3(None, body, None, "publicURL")
                .unwrap_err()
                .to_string()
                .contains("X-Subject-Token")
        );
    }

    #[test]
    fn requests_name_the_user_and_scope_as_keystone_expects() {
        let v2 = v2_request(&auth(AuthVersion::V2));
        assert_eq!(
            v2,
            json!({"auth": {"passwordCredentials": {"username": "alice", "password": "s3cret"}, "tenantName": "archive"}})
        );
        let v3 = v3_request(&auth(AuthVersion::V3));
        assert_eq!(
            v3,
            json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": "alice", "password": "s3cret", "domain": {"name": "Default"}}}},
                "scope": {"project": {"name": "archive", "domain": {"id": "default"}}}
            }})
        );
        let mut by_ids = auth(AuthVersion::V3);
        by_ids.user_id = Some("u-1".into());
        by_ids.project_id = Some("p-1".into());
        let v3 = v3_request(&by_ids);
        assert_eq!(
            v3["auth"]["identity"]["password"]["user"],
            json!({"id": "u-1", "password": "s3cret"})
        );
        assert_eq!(v3["auth"]["scope"], json!({"project": {"id": "p-1"}}));
        let mut domain_scoped = auth(AuthVersion::V3);
        domain_scoped.tenant = None;
        domain_scoped.domain_name = Some("Archive".into());
        assert_eq!(
            v3_request(&domain_scoped)["auth"]["scope"],
            json!({"domain": {"name": "Archive"}})
        );
        assert_eq!(v2_url("https://k:5000/v2.0"), "https://k:5000/v2.0/tokens");
        assert_eq!(v3_url("https://k:5000/v3"), "https://k:5000/v3/auth/tokens");
        assert_eq!(
            v3_url("https://k:5000/v3/auth/tokens"),
            "https://k:5000/v3/auth/tokens"
        );
    }

    #[test]
    fn keystone_error_messages_are_read() {
        let body = br#"{"error": {"message": "The request you have made requires authentication.", "code": 401, "title": "Unauthorized"}}"#;
        assert_eq!(
            error_message(body).as_deref(),
            Some("The request you have made requires authentication.")
        );
        assert_eq!(error_message(b"<html>"), None);
    }
}
