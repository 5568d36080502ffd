//! Configuration exactly as WAL-E reads it: the storage prefix, S3 settings and retry
//! limits, from command-line flags, the process environment and an envdir directory.
//!
//! This is the only module that reads environment variables. It turns them into a
//! validated [`Config`] without touching the network, so a `restore_command` pays nothing
//! here but a few map look-ups.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, always naming the variable or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No prefix flag or variable is set.
    #[error(
        "no storage prefix defined: set WALE_S3_PREFIX or WALE_FILE_PREFIX (or pass --s3-prefix/--file-prefix)"
    )]
    NoPrefix,
    /// The prefix uses a scheme WAL-E knows but wale does not implement yet.
    #[error(
        "{source_name}={value}: {scheme}:// storage is not supported yet (only s3:// and file://)"
    )]
    UnsupportedScheme {
        /// The flag or variable that held the prefix.
        source_name: String,
        /// The prefix as given.
        value: String,
        /// The URL scheme.
        scheme: String,
    },
    /// The prefix is not a URL with a known scheme.
    #[error("{source_name}={value}: {reason}")]
    BadPrefix {
        /// The flag or variable that held the prefix.
        source_name: String,
        /// The prefix as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `WALE_S3_ENDPOINT` does not follow WAL-E's `<proto>+<convention>://host[:port]`.
    #[error("WALE_S3_ENDPOINT={value}: {reason}")]
    BadEndpoint {
        /// The variable's value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A variable holds a value of the wrong shape.
    #[error("{name}={value}: {reason}")]
    BadValue {
        /// The variable name.
        name: &'static str,
        /// Its value (never a secret).
        value: String,
        /// What was expected.
        reason: &'static str,
    },
    /// S3 credentials are missing.
    #[error(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_INSTANCE_PROFILE=true"
    )]
    NoCredentials,
    /// The envdir directory or one of its files could not be read.
    #[error("envdir {path}: {source}")]
    Envdir {
        /// The directory or file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Environment variables as the command sees them: the process environment overlaid with
/// an envdir directory, the way `envdir DIR wale …` would have set them.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may hold secrets; names are enough to debug.
        let mut names: Vec<_> = self.vars.keys().collect();
        names.sort();
        f.debug_struct("Env").field("names", &names).finish()
    }
}

impl Env {
    /// The process environment (non-UTF-8 values are ignored: none of ours can be).
    pub fn from_process() -> Self {
        Self::from_pairs(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// An environment from explicit pairs (tests, or a scrubbed environment).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Applies an envdir directory with daemontools semantics: one variable per file named
    /// after it; the value is the file's first line with trailing spaces and tabs removed
    /// and NUL bytes turned into newlines; an empty file removes the variable. Files whose
    /// names start with `.` or contain `=` are skipped, as are subdirectories.
    pub fn apply_envdir(&mut self, dir: &Path) -> Result<(), Error> {
        let envdir_err = |path: &Path, source| Error::Envdir {
            path: path.to_path_buf(),
            source,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| envdir_err(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| envdir_err(dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || name.contains('=') {
                continue;
            }
            let path = entry.path();
            if std::fs::metadata(&path)
                .map_err(|e| envdir_err(&path, e))?
                .is_dir()
            {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| envdir_err(&path, e))?;
            if bytes.is_empty() {
                self.vars.remove(&name);
                continue;
            }
            let first_line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
            let trimmed_len = first_line
                .iter()
                .rposition(|&b| b != b' ' && b != b'\t')
                .map_or(0, |i| i + 1);
            let value: Vec<u8> = first_line[..trimmed_len]
                .iter()
                .map(|&b| if b == 0 { b'\n' } else { b })
                .collect();
            self.vars
                .insert(name, String::from_utf8_lossy(&value).into_owned());
        }
        Ok(())
    }

    /// The value of a variable, `None` when unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The value of a variable when set and not empty.
    fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }
}

/// Global options that WAL-E takes before the subcommand, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct GlobalFlags {
    /// `--file-prefix`.
    pub file_prefix: Option<String>,
    /// `--gs-prefix`.
    pub gs_prefix: Option<String>,
    /// `--s3-prefix`.
    pub s3_prefix: Option<String>,
    /// `--wabs-prefix`.
    pub wabs_prefix: Option<String>,
    /// `-k/--aws-access-key-id`.
    pub aws_access_key_id: Option<String>,
    /// `--aws-instance-profile`.
    pub aws_instance_profile: bool,
}

/// Everything a command needs to know, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the archive lives.
    pub store: StoreConfig,
    /// How hard to retry transient storage failures.
    pub retry: RetryPolicy,
    /// Where and how long the prefetcher works.
    pub prefetch: PrefetchSettings,
}

/// Prefetch settings from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchSettings {
    /// `WALE_PREFETCH_DIR`: the prefetch area, instead of `<pg_wal>/.wal-e/prefetch`
    /// (outside `pg_wal` is better for `pg_rewind`; same file system as `pg_wal`).
    pub dir: Option<String>,
    /// `WALE_PREFETCH_IDLE_SECONDS`: the prefetcher exits after this long without a
    /// request (default 60).
    pub idle: Duration,
    /// `WALE_PREFETCH_MAX_BYTES`: the most decompressed bytes the prefetch area may hold
    /// (default 1 GiB); caps `--prefetch` for large segments.
    pub max_bytes: u64,
}

/// The backend selected by the prefix's URL scheme, with its settings.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// `s3://bucket/path`.
    S3(S3Config),
    /// `file:///path` (the netloc is ignored, as WAL-E does).
    File(FileConfig),
}

impl StoreConfig {
    /// The archive's key prefix inside the bucket or root: empty, or ending in `/`.
    pub fn path_prefix(&self) -> &str {
        match self {
            StoreConfig::S3(s3) => &s3.path_prefix,
            StoreConfig::File(file) => &file.path_prefix,
        }
    }
}

/// The local-file backend: keys are paths under `/`.
#[derive(Debug, Clone)]
pub struct FileConfig {
    /// The prefix path without its leading `/`, with a trailing `/` (or empty).
    pub path_prefix: String,
}

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

/// Limits on retrying transient storage failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, first included (`WALE_RETRIES`, default 100 as in WAL-E).
    pub max_attempts: u32,
    /// Wall-clock budget for all attempts (`WALE_RETRY_DEADLINE` seconds, default 600), so a
    /// `restore_command` never hangs for WAL-E's 2.7 hours.
    pub deadline: Duration,
    /// First backoff; doubles per failure, with jitter.
    pub base_delay: Duration,
    /// Cap on one backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 100,
            deadline: Duration::from_secs(600),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// Where a prefix came from, in WAL-E's order of precedence.
const PREFIX_SOURCES: [&str; 9] = [
    "--file-prefix",
    "--gs-prefix",
    "--s3-prefix",
    "--wabs-prefix",
    "WALE_FILE_PREFIX",
    "WALE_GS_PREFIX",
    "WALE_S3_PREFIX",
    "WALE_SWIFT_PREFIX",
    "WALE_WABS_PREFIX",
];

impl Config {
    /// Resolves flags and environment into a validated configuration.
    pub fn resolve(flags: &GlobalFlags, env: &Env) -> Result<Config, Error> {
        let (source_name, prefix) = choose_prefix(flags, env)?;
        let store = parse_prefix(source_name, prefix, flags, env)?;
        let retry = retry_policy(env)?;
        let prefetch = prefetch_settings(env)?;
        Ok(Config {
            store,
            retry,
            prefetch,
        })
    }
}

/// The variables that give a child `wale` (a restored server's `restore_command`) this
/// same configuration from an envdir: the chosen prefix under its variable name (a prefix
/// flag becomes its variable; other prefixes are left out so precedence cannot change),
/// every other `WALE_*` and `AWS_*` variable, and the credential flags. Sorted by name.
pub fn envdir_settings(flags: &GlobalFlags, env: &Env) -> Result<Vec<(String, String)>, Error> {
    let (source_name, prefix) = choose_prefix(flags, env)?;
    let prefix_var = match source_name {
        "--file-prefix" => "WALE_FILE_PREFIX",
        "--gs-prefix" => "WALE_GS_PREFIX",
        "--s3-prefix" => "WALE_S3_PREFIX",
        "--wabs-prefix" => "WALE_WABS_PREFIX",
        env_name => env_name,
    };
    let mut settings: Vec<(String, String)> = env
        .vars
        .iter()
        .filter(|(name, _)| {
            (name.starts_with("WALE_") || name.starts_with("AWS_")) && !name.ends_with("_PREFIX")
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    settings.push((prefix_var.to_string(), prefix.to_string()));
    if let Some(key) = &flags.aws_access_key_id {
        settings.retain(|(name, _)| name != "AWS_ACCESS_KEY_ID");
        settings.push(("AWS_ACCESS_KEY_ID".into(), key.clone()));
    }
    if flags.aws_instance_profile {
        settings.retain(|(name, _)| name != "AWS_INSTANCE_PROFILE");
        settings.push(("AWS_INSTANCE_PROFILE".into(), "true".into()));
    }
    settings.sort();
    Ok(settings)
}

/// The first non-empty prefix in WAL-E's order, with the name of where it came from.
fn choose_prefix<'a>(
    flags: &'a GlobalFlags,
    env: &'a Env,
) -> Result<(&'static str, &'a str), Error> {
    let from_flags = [
        &flags.file_prefix,
        &flags.gs_prefix,
        &flags.s3_prefix,
        &flags.wabs_prefix,
    ];
    let candidates = from_flags
        .into_iter()
        .map(|v| v.as_deref())
        .chain(PREFIX_SOURCES[4..].iter().map(|name| env.get(name)));
    PREFIX_SOURCES
        .iter()
        .zip(candidates)
        .find_map(|(name, value)| Some((*name, value.filter(|v| !v.is_empty())?)))
        .ok_or(Error::NoPrefix)
}

fn parse_prefix(
    source_name: &str,
    value: &str,
    flags: &GlobalFlags,
    env: &Env,
) -> Result<StoreConfig, Error> {
    let bad = |reason: &str| Error::BadPrefix {
        source_name: source_name.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, rest) = value
        .split_once("://")
        .ok_or_else(|| bad("expected a URL such as s3://bucket/path or file:///path"))?;
    let (netloc, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path_prefix = normalize_path_prefix(path);
    match scheme {
        "s3" => {
            if netloc.is_empty() {
                return Err(bad("the bucket name is missing"));
            }
            Ok(StoreConfig::S3(s3_config(netloc, path_prefix, flags, env)?))
        }
        "file" => Ok(StoreConfig::File(FileConfig { path_prefix })),
        "gs" | "wabs" | "swift" => Err(Error::UnsupportedScheme {
            source_name: source_name.to_string(),
            value: value.to_string(),
            scheme: scheme.to_string(),
        }),
        _ => Err(bad("unknown scheme: expected s3:// or file://")),
    }
}

/// WAL-E strips every leading `/` and adds one trailing `/` when the rest is not empty.
fn normalize_path_prefix(path: &str) -> String {
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() || trimmed.ends_with('/') {
        trimmed.to_string()
    } else {
        format!("{trimmed}/")
    }
}

fn s3_config(
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
        let (Some(access_key_id), Some(secret_access_key)) = (access_key_id, secret_access_key)
        else {
            return Err(Error::NoCredentials);
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

/// WAL-E's `parse_boolean_envvar`: empty, `false`, `0` are off; `true`, `1` are on.
fn parse_bool(name: &'static str, value: Option<&str>) -> Result<bool, Error> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("" | "false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(_) => Err(Error::BadValue {
            name,
            value: value.unwrap_or_default().to_string(),
            reason: "expected true, false, 1 or 0",
        }),
    }
}

fn retry_policy(env: &Env) -> Result<RetryPolicy, Error> {
    let mut policy = RetryPolicy::default();
    if let Some(value) = env.non_empty("WALE_RETRIES") {
        policy.max_attempts = match value.trim().parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(Error::BadValue {
                    name: "WALE_RETRIES",
                    value: value.to_string(),
                    reason: "expected a whole number of attempts, at least 1",
                });
            }
        };
    }
    if let Some(value) = env.non_empty("WALE_RETRY_DEADLINE") {
        let seconds = value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| Error::BadValue {
                name: "WALE_RETRY_DEADLINE",
                value: value.to_string(),
                reason: "expected a number of seconds",
            })?;
        policy.deadline = Duration::from_secs_f64(seconds);
    }
    Ok(policy)
}

fn prefetch_settings(env: &Env) -> Result<PrefetchSettings, Error> {
    let idle = match env.non_empty("WALE_PREFETCH_IDLE_SECONDS") {
        None => Duration::from_secs(60),
        Some(value) => value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| Error::BadValue {
                name: "WALE_PREFETCH_IDLE_SECONDS",
                value: value.to_string(),
                reason: "expected a number of seconds",
            })?,
    };
    let max_bytes = match env.non_empty("WALE_PREFETCH_MAX_BYTES") {
        None => 1 << 30,
        Some(value) => value.trim().parse::<u64>().map_err(|_| Error::BadValue {
            name: "WALE_PREFETCH_MAX_BYTES",
            value: value.to_string(),
            reason: "expected a number of bytes",
        })?,
    };
    Ok(PrefetchSettings {
        dir: env.non_empty("WALE_PREFETCH_DIR").map(str::to_string),
        idle,
        max_bytes,
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

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    fn s3_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("WALE_S3_PREFIX", "s3://bucket/some/prefix"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "sEcReTvAlUe"),
        ]
    }

    #[test]
    fn prefix_precedence_follows_wal_e() {
        let e = env(&[
            ("WALE_S3_PREFIX", "s3://b/p"),
            ("WALE_FILE_PREFIX", "file:///tmp/x"),
        ]);
        let c = Config::resolve(&GlobalFlags::default(), &e).unwrap();
        assert!(matches!(c.store, StoreConfig::File(_)));
        let flags = GlobalFlags {
            s3_prefix: Some("file:///from/flag".into()),
            ..Default::default()
        };
        // The backend follows the URL scheme, not the variable's name.
        let c = Config::resolve(&flags, &e).unwrap();
        assert_eq!(c.store.path_prefix(), "from/flag/");
        // Empty values are skipped.
        let e = env(&[("WALE_FILE_PREFIX", ""), ("WALE_S3_PREFIX", "file:///y")]);
        assert_eq!(
            Config::resolve(&GlobalFlags::default(), &e)
                .unwrap()
                .store
                .path_prefix(),
            "y/"
        );
    }

    #[test]
    fn path_prefix_is_normalized_like_wal_e() {
        for (url, want) in [
            ("s3://b/foo", "foo/"),
            ("s3://b/foo/", "foo/"),
            ("s3://b", ""),
            ("s3://b/", ""),
            ("s3://b//a/b", "a/b/"),
            ("file://localhost/x/y", "x/y/"),
            ("file:///x/y", "x/y/"),
        ] {
            let mut pairs = s3_env();
            pairs[0] = ("WALE_S3_PREFIX", url);
            let c = Config::resolve(&GlobalFlags::default(), &env(&pairs)).unwrap();
            assert_eq!(c.store.path_prefix(), want, "{url}");
        }
    }

    #[test]
    fn other_backends_are_named_as_unsupported() {
        let err = Config::resolve(
            &GlobalFlags::default(),
            &env(&[("WALE_GS_PREFIX", "gs://b/p")]),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("WALE_GS_PREFIX") && msg.contains("not supported yet"),
            "{msg}"
        );
        assert!(matches!(
            Config::resolve(&GlobalFlags::default(), &env(&[])),
            Err(Error::NoPrefix)
        ));
        assert!(
            Config::resolve(
                &GlobalFlags::default(),
                &env(&[("WALE_S3_PREFIX", "ftp://x")])
            )
            .is_err()
        );
    }

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
            Err(Error::NoCredentials)
        ));
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
    fn retries_come_from_wale_retries() {
        let mut pairs = s3_env();
        pairs.push(("WALE_RETRIES", "3"));
        pairs.push(("WALE_RETRY_DEADLINE", "1.5"));
        let c = Config::resolve(&GlobalFlags::default(), &env(&pairs)).unwrap();
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.retry.deadline, Duration::from_millis(1500));
        pairs.push(("WALE_RETRIES", "0"));
        let mut bad = s3_env();
        bad.push(("WALE_RETRIES", "0"));
        assert!(Config::resolve(&GlobalFlags::default(), &env(&bad)).is_err());
    }

    #[test]
    fn prefetch_settings_come_from_the_environment() {
        let c = Config::resolve(&GlobalFlags::default(), &env(&s3_env())).unwrap();
        assert_eq!(c.prefetch.idle, Duration::from_secs(60));
        assert_eq!(c.prefetch.max_bytes, 1 << 30);
        let mut pairs = s3_env();
        pairs.extend([
            ("WALE_PREFETCH_DIR", "/srv/prefetch"),
            ("WALE_PREFETCH_IDLE_SECONDS", "2.5"),
            ("WALE_PREFETCH_MAX_BYTES", "67108864"),
        ]);
        let c = Config::resolve(&GlobalFlags::default(), &env(&pairs)).unwrap();
        assert_eq!(c.prefetch.dir.as_deref(), Some("/srv/prefetch"));
        assert_eq!(c.prefetch.idle, Duration::from_millis(2500));
        assert_eq!(c.prefetch.max_bytes, 64 << 20);
        pairs.push(("WALE_PREFETCH_MAX_BYTES", "lots"));
        assert!(Config::resolve(&GlobalFlags::default(), &env(&pairs)).is_err());
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

    #[test]
    fn envdir_settings_keep_the_chosen_prefix_and_credentials() {
        let env = env(&[
            ("WALE_FILE_PREFIX", "file:///a"),
            ("WALE_S3_PREFIX", "s3://b/p"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("WALE_RETRIES", "3"),
            ("HOME", "/root"),
        ]);
        let flags = GlobalFlags {
            s3_prefix: Some("s3://flag/p".into()),
            aws_access_key_id: Some("K".into()),
            ..GlobalFlags::default()
        };
        assert_eq!(
            envdir_settings(&flags, &env).unwrap(),
            [
                ("AWS_ACCESS_KEY_ID".to_string(), "K".to_string()),
                ("AWS_SECRET_ACCESS_KEY".into(), "s".into()),
                ("WALE_RETRIES".into(), "3".into()),
                ("WALE_S3_PREFIX".into(), "s3://flag/p".into()),
            ]
        );
        let from_env = envdir_settings(&GlobalFlags::default(), &env).unwrap();
        assert!(from_env.contains(&("WALE_FILE_PREFIX".into(), "file:///a".into())));
        assert!(!from_env.iter().any(|(n, _)| n == "WALE_S3_PREFIX"));
    }

    #[test]
    fn envdir_follows_daemontools() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("WALE_S3_PREFIX"),
            "s3://b/p \t\nignored second line\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("EMPTY_REMOVES"), "").unwrap();
        std::fs::write(dir.path().join("NUL_BECOMES_NEWLINE"), b"a\0b\n").unwrap();
        std::fs::write(dir.path().join("NEWLINE_ONLY"), "\n").unwrap();
        std::fs::write(dir.path().join(".hidden"), "x").unwrap();
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        let mut e = env(&[("EMPTY_REMOVES", "was set"), ("WALE_S3_PREFIX", "old")]);
        e.apply_envdir(dir.path()).unwrap();
        assert_eq!(e.get("WALE_S3_PREFIX"), Some("s3://b/p"));
        assert_eq!(e.get("EMPTY_REMOVES"), None);
        assert_eq!(e.get("NUL_BECOMES_NEWLINE"), Some("a\nb"));
        assert_eq!(e.get("NEWLINE_ONLY"), Some(""));
        assert_eq!(e.get(".hidden"), None);
        let missing = e.apply_envdir(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"));
    }
}
