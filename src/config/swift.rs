//! OpenStack Swift settings (`swift://container/path`, `WALE_SWIFT_PREFIX`): where to
//! authenticate and as whom, read from the same variables WAL-E passed to swiftclient.
//!
//! Authentication is v1 (tempauth/swauth: the user and key in headers), or Keystone v2 or
//! v3 (a token and a service catalog naming the object store's endpoint), as
//! `SWIFT_AUTH_VERSION` says (default 2, as in WAL-E).

use std::fmt;

use super::{Env, Error, base_url};

/// Swift settings, resolved (Debug never shows the password).
#[derive(Debug, Clone)]
pub struct SwiftConfig {
    /// The container (the prefix URL's host part).
    pub container: String,
    /// The archive's logical prefix: no leading `/`, a trailing `/` (or empty). Object
    /// names are `/` + this + the rest of the key, as WAL-E wrote them.
    pub path_prefix: String,
    /// How to get a token and the storage URL (boxed: it is most of the settings' size).
    pub auth: Box<SwiftAuth>,
}

/// The authentication protocol (`SWIFT_AUTH_VERSION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVersion {
    /// v1: `GET` the auth URL with `X-Auth-User`/`X-Auth-Key` (tempauth, swauth).
    V1,
    /// Keystone v2.0: `POST {auth URL}/tokens`.
    V2,
    /// Keystone v3: `POST {auth URL}/auth/tokens`.
    V3,
}

/// Everything authentication needs (the v3 names apply to v3 only).
#[derive(Clone)]
pub struct SwiftAuth {
    /// `SWIFT_AUTHURL`, without a trailing `/`.
    pub auth_url: String,
    /// `SWIFT_AUTH_VERSION`.
    pub version: AuthVersion,
    /// `SWIFT_USER` (for v1, `account:user` as tempauth wants it).
    pub user: Option<String>,
    /// `SWIFT_PASSWORD` (the key, for v1). Never printed.
    pub password: String,
    /// `SWIFT_TENANT`: the tenant (v2) or project (v3) by name.
    pub tenant: Option<String>,
    /// `SWIFT_TENANT_ID`: the tenant or project by id.
    pub tenant_id: Option<String>,
    /// `SWIFT_REGION`: the catalog endpoint's region; the first one when unset.
    pub region: Option<String>,
    /// `SWIFT_ENDPOINT_TYPE`: `publicURL` (default), `internalURL` or `adminURL`.
    pub endpoint_type: String,
    /// v3: `SWIFT_USER_ID`, the user by id instead of by name.
    pub user_id: Option<String>,
    /// v3: `SWIFT_USER_DOMAIN_ID`.
    pub user_domain_id: Option<String>,
    /// v3: `SWIFT_USER_DOMAIN_NAME`.
    pub user_domain_name: Option<String>,
    /// v3: `SWIFT_PROJECT_ID` (wins over `SWIFT_TENANT_ID`).
    pub project_id: Option<String>,
    /// v3: `SWIFT_PROJECT_NAME` (wins over `SWIFT_TENANT`).
    pub project_name: Option<String>,
    /// v3: `SWIFT_PROJECT_DOMAIN_ID`.
    pub project_domain_id: Option<String>,
    /// v3: `SWIFT_PROJECT_DOMAIN_NAME`.
    pub project_domain_name: Option<String>,
    /// v3: `SWIFT_DOMAIN_ID`, a domain-scoped token when no project is named.
    pub domain_id: Option<String>,
    /// v3: `SWIFT_DOMAIN_NAME`, likewise by name.
    pub domain_name: Option<String>,
}

impl fmt::Debug for SwiftAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwiftAuth")
            .field("auth_url", &self.auth_url)
            .field("version", &self.version)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("tenant", &self.tenant)
            .field("tenant_id", &self.tenant_id)
            .field("region", &self.region)
            .field("endpoint_type", &self.endpoint_type)
            .field("user_id", &self.user_id)
            .field("project_id", &self.project_id)
            .field("project_name", &self.project_name)
            .finish_non_exhaustive()
    }
}

impl SwiftAuth {
    /// Whether any address authentication may lead to is `https://`: the auth URL (the
    /// storage URL comes from the server and may differ, so Keystone setups load the
    /// roots too).
    pub fn may_use_tls(&self) -> bool {
        self.auth_url.starts_with("https://") || self.version != AuthVersion::V1
    }
}

/// The variables WAL-E read for Swift, carried into a restored server's envdir.
pub(super) fn is_swift_var(name: &str) -> bool {
    name.starts_with("SWIFT_")
}

pub(super) fn swift_config(
    container: &str,
    path_prefix: String,
    env: &Env,
) -> Result<SwiftConfig, Error> {
    let get = |name| env.non_empty(name).map(str::to_string);
    let auth_url = env.non_empty("SWIFT_AUTHURL").ok_or(Error::Missing(
        "no Swift authentication URL: set SWIFT_AUTHURL (e.g. https://keystone.example.com:5000/v2.0, or http://host:8080/auth/v1.0 with SWIFT_AUTH_VERSION=1)",
    ))?;
    let auth_url = base_url("SWIFT_AUTHURL", auth_url)?;
    let version = auth_version(env.get("SWIFT_AUTH_VERSION"))?;
    let password = get("SWIFT_PASSWORD").ok_or(Error::Missing(
        "no Swift password: set SWIFT_PASSWORD (the key, for auth v1)",
    ))?;
    let auth = SwiftAuth {
        auth_url,
        version,
        user: get("SWIFT_USER"),
        password,
        tenant: get("SWIFT_TENANT"),
        tenant_id: get("SWIFT_TENANT_ID"),
        region: get("SWIFT_REGION"),
        endpoint_type: get("SWIFT_ENDPOINT_TYPE").unwrap_or_else(|| "publicURL".into()),
        user_id: get("SWIFT_USER_ID"),
        user_domain_id: get("SWIFT_USER_DOMAIN_ID"),
        user_domain_name: get("SWIFT_USER_DOMAIN_NAME"),
        project_id: get("SWIFT_PROJECT_ID"),
        project_name: get("SWIFT_PROJECT_NAME"),
        project_domain_id: get("SWIFT_PROJECT_DOMAIN_ID"),
        project_domain_name: get("SWIFT_PROJECT_DOMAIN_NAME"),
        domain_id: get("SWIFT_DOMAIN_ID"),
        domain_name: get("SWIFT_DOMAIN_NAME"),
    };
    check_identity(&auth)?;
    Ok(SwiftConfig {
        container: container.to_string(),
        path_prefix,
        auth: Box::new(auth),
    })
}

/// `SWIFT_AUTH_VERSION` as swiftclient reads it; unset or empty is 2 (WAL-E's default).
fn auth_version(value: Option<&str>) -> Result<AuthVersion, Error> {
    match value.unwrap_or_default().trim() {
        "1" | "1.0" => Ok(AuthVersion::V1),
        "" | "2" | "2.0" => Ok(AuthVersion::V2),
        "3" | "3.0" => Ok(AuthVersion::V3),
        other => Err(Error::BadValue {
            name: "SWIFT_AUTH_VERSION",
            value: other.to_string(),
            reason: "expected 1, 2 or 3",
        }),
    }
}

/// Refuses, before any request, settings that cannot name a user (and, for v2, a tenant:
/// Keystone v2 gives no service catalog without one).
fn check_identity(auth: &SwiftAuth) -> Result<(), Error> {
    let by_name = auth.user.is_some();
    match auth.version {
        AuthVersion::V1 if !by_name => Err(Error::Missing(
            "no Swift user: set SWIFT_USER (account:user for auth v1)",
        )),
        AuthVersion::V2 if !by_name && auth.user_id.is_none() => Err(Error::Missing(
            "no Swift user: set SWIFT_USER (and SWIFT_TENANT) for Keystone v2",
        )),
        AuthVersion::V2 if auth.tenant.is_none() && auth.tenant_id.is_none() => {
            Err(Error::Missing(
                "no Swift tenant: set SWIFT_TENANT or SWIFT_TENANT_ID for Keystone v2 (SWIFT_AUTH_VERSION=1 for tempauth)",
            ))
        }
        AuthVersion::V3 if !by_name && auth.user_id.is_none() => Err(Error::Missing(
            "no Swift user: set SWIFT_USER (with SWIFT_USER_DOMAIN_NAME or SWIFT_USER_DOMAIN_ID) or SWIFT_USER_ID for Keystone v3",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::env;

    fn v1_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("SWIFT_AUTHURL", "http://127.0.0.1:8080/auth/v1.0/"),
            ("SWIFT_AUTH_VERSION", "1"),
            ("SWIFT_USER", "test:tester"),
            ("SWIFT_PASSWORD", "sEcReT"),
        ]
    }

    #[test]
    fn settings_follow_wal_e_and_hide_the_password() {
        let config = swift_config("c", "p/".into(), &env(&v1_env())).unwrap();
        assert_eq!(config.auth.auth_url, "http://127.0.0.1:8080/auth/v1.0");
        assert_eq!(config.auth.version, AuthVersion::V1);
        assert_eq!(config.auth.endpoint_type, "publicURL");
        assert!(!config.auth.may_use_tls());
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("sEcReT") && shown.contains("<redacted>"),
            "{shown}"
        );

        let v2 = env(&[
            ("SWIFT_AUTHURL", "https://keystone.example.com:5000/v2.0"),
            ("SWIFT_USER", "alice"),
            ("SWIFT_PASSWORD", "pw"),
            ("SWIFT_TENANT", "archive"),
            ("SWIFT_REGION", "RegionTwo"),
            ("SWIFT_ENDPOINT_TYPE", "internalURL"),
        ]);
        let config = swift_config("c", String::new(), &v2).unwrap();
        assert_eq!(config.auth.version, AuthVersion::V2, "the default is 2");
        assert_eq!(config.auth.region.as_deref(), Some("RegionTwo"));
        assert_eq!(config.auth.endpoint_type, "internalURL");
        assert!(config.auth.may_use_tls());
    }

    #[test]
    fn missing_or_bad_settings_are_named() {
        let err = |pairs: &[(&'static str, &'static str)]| {
            swift_config("c", String::new(), &env(pairs))
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[]).contains("SWIFT_AUTHURL"));
        let mut no_password = v1_env();
        no_password.retain(|(n, _)| *n != "SWIFT_PASSWORD");
        assert!(err(&no_password).contains("SWIFT_PASSWORD"));
        let mut no_user = v1_env();
        no_user.retain(|(n, _)| *n != "SWIFT_USER");
        assert!(err(&no_user).contains("SWIFT_USER"));
        let mut v2_no_tenant = v1_env();
        v2_no_tenant.retain(|(n, _)| *n != "SWIFT_AUTH_VERSION");
        assert!(err(&v2_no_tenant).contains("SWIFT_TENANT"));
        let mut bad_version = v1_env();
        bad_version[1] = ("SWIFT_AUTH_VERSION", "4");
        assert!(err(&bad_version).contains("SWIFT_AUTH_VERSION=4"));
        let mut bad_url = v1_env();
        bad_url[0] = ("SWIFT_AUTHURL", "127.0.0.1:8080");
        assert!(err(&bad_url).contains("SWIFT_AUTHURL"));
        let v3_by_id = env(&[
            ("SWIFT_AUTHURL", "https://k/v3"),
            ("SWIFT_AUTH_VERSION", "3"),
            ("SWIFT_USER_ID", "u1"),
            ("SWIFT_PASSWORD", "pw"),
        ]);
        assert!(swift_config("c", String::new(), &v3_by_id).is_ok());
    }
}
