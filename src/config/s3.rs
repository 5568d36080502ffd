//! S3 settings: the endpoint grammar of `WALE_S3_ENDPOINT`, credentials, bucket
//! addressing.

use std::fmt;

use super::{Env, Error, GlobalFlags, parse_bool};

/// S3 settings, resolved from WAL-E's variables (Debug never shows secrets).
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The bucket (the prefix URL's host part).
    pub bucket: String,
    /// The key prefix without leading `/`, with a trailing `/` (or empty).
    pub path_prefix: String,
    /// `AWS_REGION`, if set.
    pub region: Option<String>,
    /// `WALE_S3_ENDPOINT`, parsed.
    pub endpoint: Option<Endpoint>,
    /// Where credentials come from.
    pub credentials: Credentials,
}

/// The source of S3 credentials.
#[derive(Clone)]
pub enum Credentials {
    /// Keys from flags or the environment.
    Static {
        /// `AWS_ACCESS_KEY_ID` or `-k`.
        access_key_id: String,
        /// `AWS_SECRET_ACCESS_KEY`.
        secret_access_key: String,
        /// `AWS_SECURITY_TOKEN` or `AWS_SESSION_TOKEN`.
        session_token: Option<String>,
    },
    /// The EC2 instance profile, asked for explicitly (the only case that talks to IMDS).
    InstanceProfile,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Static {
                access_key_id,
                session_token,
                ..
            } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &"<redacted>")
                .field(
                    "session_token",
                    &session_token.as_ref().map(|_| "<redacted>"),
                )
                .finish(),
            Credentials::InstanceProfile => f.write_str("InstanceProfile"),
        }
    }
}

/// How requests are addressed, from `WALE_S3_ENDPOINT`'s `+convention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// `host/bucket/key` (boto's OrdinaryCallingFormat).
    Path,
    /// `bucket.host/key` (SubdomainCallingFormat).
    Subdomain,
    /// The bucket name is itself the host name, CNAME style (VHostCallingFormat).
    VirtualHost,
}

/// A parsed `WALE_S3_ENDPOINT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https`.
    pub secure: bool,
    /// The addressing convention.
    pub addressing: Addressing,
    /// Host name or address.
    pub host: String,
    /// Explicit port, if any.
    pub port: Option<u16>,
}

impl Endpoint {
    /// Parses WAL-E's `<http|https>+<path|virtualhost|subdomain>://host[:port]`, refusing
    /// what WAL-E refuses: user info, any path (even a lone `/`) and query strings.
    pub fn parse(value: &str) -> Result<Endpoint, Error> {
        let bad = |reason: &str| Error::BadEndpoint {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = value.split_once("://").ok_or_else(|| {
            bad("expected <http|https>+<path|virtualhost|subdomain>://host[:port]")
        })?;
        let (proto, convention) = scheme.split_once('+').ok_or_else(|| {
            bad("URI scheme is invalid: expected http+path, https+path, http+subdomain, …")
        })?;
        let secure = match proto {
            "http" => false,
            "https" => true,
            _ => return Err(bad("URI scheme is invalid: protocol must be http or https")),
        };
        let addressing = match convention {
            "path" => Addressing::Path,
            "subdomain" => Addressing::Subdomain,
            "virtualhost" => Addressing::VirtualHost,
            _ => {
                return Err(bad(
                    "URI scheme is invalid: convention must be path, subdomain or virtualhost",
                ));
            }
        };
        if rest.contains('@') {
            return Err(bad("user information is not allowed"));
        }
        if rest.contains('?') {
            return Err(bad("a query string is not allowed"));
        }
        if rest.contains('/') || rest.contains('#') {
            return Err(bad("a path is not allowed (not even a trailing /)"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| bad("bad host or port"))?;
        if host.is_empty() {
            return Err(bad("the host is missing"));
        }
        Ok(Endpoint {
            secure,
            addressing,
            host,
            port,
        })
    }

    /// `scheme://host[:port]`, for a bucket-less base URL.
    pub fn base_url(&self, host: &str) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        match self.port {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        }
    }
}

/// Splits `host[:port]`, accepting `[v6]:port`.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), Some(port.parse().ok()?))),
        None => Some((s.to_string(), None)),
    }
}

pub(super) fn s3_config(
    bucket: &str,
    path_prefix: String,
    flags: &GlobalFlags,
    env: &Env,
) -> Result<S3Config, Error> {
    let endpoint = env
        .non_empty("WALE_S3_ENDPOINT")
        .map(Endpoint::parse)
        .transpose()?;
    let instance_profile = flags.aws_instance_profile
        || parse_bool("AWS_INSTANCE_PROFILE", env.get("AWS_INSTANCE_PROFILE"))?;
    let credentials = if instance_profile {
        Credentials::InstanceProfile
    } else {
        let access_key_id = flags
            .aws_access_key_id
            .as_deref()
            .or_else(|| env.non_empty("AWS_ACCESS_KEY_ID"));
        let secret_access_key = env.non_empty("AWS_SECRET_ACCESS_KEY");
        let (access_key_id, secret_access_key) = match (access_key_id, secret_access_key) {
            (Some(id), Some(secret)) => (id, secret),
            (None, None) => return Err(Error::NoCredentials { missing: None }),
            (None, Some(_)) => {
                return Err(Error::NoCredentials {
                    missing: Some("AWS_ACCESS_KEY_ID"),
                });
            }
            (Some(_), None) => {
                return Err(Error::NoCredentials {
                    missing: Some("AWS_SECRET_ACCESS_KEY"),
                });
            }
        };
        Credentials::Static {
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
            session_token: env
                .non_empty("AWS_SECURITY_TOKEN")
                .or_else(|| env.non_empty("AWS_SESSION_TOKEN"))
                .map(str::to_string),
        }
    };
    Ok(S3Config {
        bucket: bucket.to_string(),
        path_prefix,
        region: env.non_empty("AWS_REGION").map(str::to_string),
        endpoint,
        credentials,
    })
}

/// Whether boto would address this bucket as a subdomain: WAL-E's "mostly subdomain
/// compatible" test plus "no dots" (`calling_format.from_store_name`). Others use path style.
pub fn bucket_is_subdomain_compatible(bucket: &str) -> bool {
    let len_ok = (3..=63).contains(&bucket.len());
    let chars_ok = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let no_bad_pairs = !["..", "-.", ".-"].iter().any(|p| bucket.contains(p));
    let ends_ok = !bucket.starts_with(['-', '.']) && !bucket.ends_with(['-', '.']);
    let is_ipv4 = bucket.split('.').count() == 4
        && bucket
            .split('.')
            .all(|p| !p.is_empty() && p.parse::<u32>().is_ok());
    len_ok && chars_ok && no_bad_pairs && ends_ok && !is_ipv4 && !bucket.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::{Config, StoreConfig};

    #[test]
    fn endpoint_syntax_and_validation() {
        let e = Endpoint::parse("http+path://127.0.0.1:9000").unwrap();
        assert_eq!(
            e,
            Endpoint {
                secure: false,
                addressing: Addressing::Path,
                host: "127.0.0.1".into(),
                port: Some(9000)
            }
        );
        assert_eq!(
            Endpoint::parse("https+virtualhost://s3.example")
                .unwrap()
                .addressing,
            Addressing::VirtualHost
        );
        assert_eq!(
            Endpoint::parse("https+subdomain://s3.example")
                .unwrap()
                .port,
            None
        );
        for bad in [
            "http://host",
            "ftp+path://host",
            "http+dns://host",
            "http+path://user:pw@host",
            "http+path://host/",
            "http+path://host/p",
            "http+path://host?x=1",
            "http+path://host:notaport",
            "http+path://",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn credentials_tokens_and_instance_profile() {
        let mut pairs = s3_env();
        pairs.push(("AWS_SESSION_TOKEN", "tok"));
        let c = Config::resolve(&GlobalFlags::default(), &env(&pairs)).unwrap();
        let StoreConfig::S3(s3) = c.store else {
            panic!()
        };
        assert!(
            matches!(s3.credentials, Credentials::Static { session_token: Some(ref t), .. } if t == "tok")
        );
        let debug = format!("{s3:?}");
        assert!(
            !debug.contains("sEcReTvAlUe") && !debug.contains("\"tok\""),
            "secret leaked into Debug: {debug}"
        );

        pairs.push(("AWS_SECURITY_TOKEN", "sec"));
        let StoreConfig::S3(s3) = Config::resolve(&GlobalFlags::default(), &env(&pairs))
            .unwrap()
            .store
        else {
            panic!()
        };
        assert!(
            matches!(s3.credentials, Credentials::Static { session_token: Some(ref t), .. } if t == "sec")
        );

        let only_prefix = env(&[
            ("WALE_S3_PREFIX", "s3://b/p"),
            ("AWS_INSTANCE_PROFILE", "TRUE"),
        ]);
        let StoreConfig::S3(s3) = Config::resolve(&GlobalFlags::default(), &only_prefix)
            .unwrap()
            .store
        else {
            panic!()
        };
        assert!(matches!(s3.credentials, Credentials::InstanceProfile));

        let garbage = env(&[
            ("WALE_S3_PREFIX", "s3://b/p"),
            ("AWS_INSTANCE_PROFILE", "yes"),
        ]);
        assert!(
            Config::resolve(&GlobalFlags::default(), &garbage)
                .unwrap_err()
                .to_string()
                .contains("AWS_INSTANCE_PROFILE")
        );
        let none = env(&[("WALE_S3_PREFIX", "s3://b/p")]);
        assert!(matches!(
            Config::resolve(&GlobalFlags::default(), &none),
            Err(Error::NoCredentials { missing: None })
        ));
        let half = env(&[("WALE_S3_PREFIX", "s3://b/p"), ("AWS_ACCESS_KEY_ID", "K")]);
        let err = Config::resolve(&GlobalFlags::default(), &half).unwrap_err();
        assert!(
            err.to_string().contains("AWS_SECRET_ACCESS_KEY is not set"),
            "{err}"
        );
        let other_half = env(&[
            ("WALE_S3_PREFIX", "s3://b/p"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]);
        let err = Config::resolve(&GlobalFlags::default(), &other_half).unwrap_err();
        assert!(
            err.to_string().contains("AWS_ACCESS_KEY_ID is not set"),
            "{err}"
        );
        let flags = GlobalFlags {
            aws_access_key_id: Some("K".into()),
            ..Default::default()
        };
        let with_secret = env(&[
            ("WALE_S3_PREFIX", "s3://b/p"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]);
        assert!(Config::resolve(&flags, &with_secret).is_ok());
    }

    #[test]
    fn bucket_addressing_follows_wal_e() {
        assert!(bucket_is_subdomain_compatible("my-bucket"));
        for b in [
            "my.bucket",
            "My",
            "ab",
            "a_b",
            "-ab",
            "ab-",
            "192.168.1.1",
            "a..b",
        ] {
            assert!(!bucket_is_subdomain_compatible(b), "{b}");
        }
    }
}
