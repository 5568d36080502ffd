//! Configuration exactly as WAL-E reads it: the storage prefix, S3 settings and retry
//! limits, from command-line flags, the process environment and an envdir directory.
//!
//! This is the only module that reads environment variables. It turns them into a
//! validated [`Config`] without touching the network, so a `restore_command` pays nothing
//! here but a few map look-ups.
//!
//! By concept: [`Env`] (the environment and envdir, in `env`), the prefix and backend
//! choice (here), S3's endpoint grammar, credentials and addressing (`s3`), Google Cloud
//! Storage (`gcs`), Azure (`azure`) and OpenStack Swift (`swift`) settings, and retry and
//! prefetch tuning (`tuning`).

use std::path::PathBuf;

/// A configuration problem, always naming the variable or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No prefix flag or variable is set.
    #[error(
        "no storage prefix defined: set WALE_S3_PREFIX, WALE_GS_PREFIX, WALE_WABS_PREFIX, WALE_SWIFT_PREFIX or WALE_FILE_PREFIX (or pass --s3-prefix, --gs-prefix, --wabs-prefix, --swift-prefix, --file-prefix)"
    )]
    NoPrefix,
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
    /// Two settings that exclude each other are both set.
    #[error("{0}")]
    Conflict(String),
    /// The secret key file a variable names cannot be read.
    #[error("{name}={}: cannot read the secret key: {source}", path.display())]
    KeyFile {
        /// The variable.
        name: &'static str,
        /// The path it holds.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// S3 credentials are missing, or only one half of a key pair is set.
    #[error("{}", no_credentials_message(missing))]
    NoCredentials {
        /// The variable that is missing when the other half of the pair is set.
        missing: Option<&'static str>,
    },
    /// A credentials file can be read but does not hold usable credentials.
    #[error("{name}={}: {reason}", path.display())]
    BadKeyFile {
        /// The variable (or the well-known location) that named the file.
        name: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it (never its secrets).
        reason: String,
    },
    /// No Google Cloud Storage credentials are configured.
    #[error(
        "no Google Cloud Storage credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, WALE_GS_INSTANCE_METADATA=true on Compute Engine, or WALE_GS_ENDPOINT for an emulator"
    )]
    NoGcsCredentials,
    /// A required setting is missing or unusable; the message names it (never a secret).
    #[error("{0}")]
    Missing(&'static str),
    /// The envdir directory or one of its files could not be read.
    #[error("envdir {path}: {source}")]
    Envdir {
        /// The directory or file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn no_credentials_message(missing: &Option<&'static str>) -> String {
    match missing {
        Some(name) => format!(
            "incomplete S3 credentials: {name} is not set (AWS_ACCESS_KEY_ID, or -k, and AWS_SECRET_ACCESS_KEY go together)"
        ),
        None => "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_INSTANCE_PROFILE=true".into(),
    }
}

mod azure;
mod decryption;
mod env;
mod gcs;
mod s3;
mod swift;
mod tuning;

pub use azure::{AzureConfig, AzureCredentials};
pub use decryption::Decryption;
pub use env::Env;
pub use gcs::{GCS_DEFAULT_ENDPOINT, GcsConfig, GcsCredentials};
pub use s3::{Addressing, Credentials, Endpoint, S3Config, bucket_is_subdomain_compatible};
pub use swift::{AuthVersion, SwiftAuth, SwiftConfig};
pub use tuning::{PrefetchSettings, RetryPolicy};

use azure::azure_config;
use gcs::gcs_config;
use s3::s3_config;
use swift::swift_config;
use tuning::{prefetch_settings, retry_policy};

pub use crate::cli::GlobalFlags;

/// Everything a command needs to know, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the archive lives.
    pub store: StoreConfig,
    /// How hard to retry transient storage failures.
    pub retry: RetryPolicy,
    /// Where and how long the prefetcher works.
    pub prefetch: PrefetchSettings,
    /// How GPG-encrypted objects are decrypted; `None` when no key is configured.
    pub decryption: Option<Decryption>,
}

/// The backend selected by the prefix's URL scheme, with its settings.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// `s3://bucket/path`.
    S3(S3Config),
    /// `gs://bucket/path`.
    Gcs(GcsConfig),
    /// `wabs://container/path`.
    Azure(AzureConfig),
    /// `swift://container/path`.
    Swift(SwiftConfig),
    /// `file:///path` (the netloc is ignored, as WAL-E does).
    File(FileConfig),
}

impl StoreConfig {
    /// The archive as a prefix URL (`s3://bucket/path/`, `file:///path/`): which archive
    /// this is, without any setting that only says how to reach it.
    pub fn prefix_url(&self) -> String {
        match self {
            StoreConfig::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.path_prefix),
            StoreConfig::Gcs(gcs) => format!("gs://{}/{}", gcs.bucket, gcs.path_prefix),
            StoreConfig::Azure(azure) => format!(
                "wabs://{}/{}/{}",
                azure.account, azure.container, azure.path_prefix
            ),
            StoreConfig::Swift(swift) => {
                format!("swift://{}/{}", swift.container, swift.path_prefix)
            }
            StoreConfig::File(file) => format!("file:///{}", file.path_prefix),
        }
    }

    /// The archive's key prefix inside the bucket or root: empty, or ending in `/`.
    pub fn path_prefix(&self) -> &str {
        match self {
            StoreConfig::S3(s3) => &s3.path_prefix,
            StoreConfig::Gcs(gcs) => &gcs.path_prefix,
            StoreConfig::Azure(azure) => &azure.path_prefix,
            StoreConfig::Swift(swift) => &swift.path_prefix,
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

/// Where a prefix came from, in WAL-E's order of precedence.
const PREFIX_SOURCES: [&str; 10] = [
    "--file-prefix",
    "--gs-prefix",
    "--s3-prefix",
    "--swift-prefix",
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
        let decryption = decryption::decryption(flags, env)?;
        Ok(Config {
            store,
            retry,
            prefetch,
            decryption,
        })
    }
}

/// The variables that give a child `wale` (a restored server's `restore_command`) this
/// same configuration from an envdir: the chosen prefix under its variable name (a prefix
/// flag becomes its variable; other prefixes are left out so precedence cannot change),
/// every other `WALE_*`, `AWS_*`, `WABS_*` and `SWIFT_*` variable, WAL-G's key variables,
/// `GOOGLE_APPLICATION_CREDENTIALS` and `GNUPGHOME`, and the credential and key flags. Key
/// paths are made absolute: the server runs `restore_command` in its data directory.
/// Sorted by name.
pub fn envdir_settings(flags: &GlobalFlags, env: &Env) -> Result<Vec<(String, String)>, Error> {
    let (source_name, prefix) = choose_prefix(flags, env)?;
    let prefix_var = match source_name {
        "--file-prefix" => "WALE_FILE_PREFIX",
        "--gs-prefix" => "WALE_GS_PREFIX",
        "--s3-prefix" => "WALE_S3_PREFIX",
        "--swift-prefix" => "WALE_SWIFT_PREFIX",
        "--wabs-prefix" => "WALE_WABS_PREFIX",
        env_name => env_name,
    };
    let mut settings: Vec<(String, String)> = env
        .vars()
        .filter(|(name, _)| {
            (name.starts_with("WALE_") || name.starts_with("AWS_")) && !name.ends_with("_PREFIX")
                || name.starts_with("WALG_PGP_")
                || name.starts_with("WABS_")
                || swift::is_swift_var(name)
                || PATH_VARS.contains(&name.as_str())
                || *name == "GCE_METADATA_HOST"
        })
        .map(|(name, value)| {
            let is_path = decryption::KEY_PATH_VARS.contains(&name.as_str())
                || PATH_VARS.contains(&name.as_str());
            let value = match std::path::absolute(value) {
                Ok(path) if is_path && !value.is_empty() => path.to_string_lossy().into_owned(),
                _ => value.clone(),
            };
            (name.clone(), value)
        })
        .collect();
    settings.push((prefix_var.to_string(), prefix.to_string()));
    if let Some(key) = &flags.aws_access_key_id {
        settings.retain(|(name, _)| name != "AWS_ACCESS_KEY_ID");
        settings.push(("AWS_ACCESS_KEY_ID".into(), key.clone()));
    }
    if let Some(key_id) = &flags.gpg_key_id {
        settings.retain(|(name, _)| name != "WALE_GPG_KEY_ID");
        settings.push(("WALE_GPG_KEY_ID".into(), key_id.clone()));
    }
    if prefix.starts_with("gs://")
        && let Some(path) = gcs::implied_key_file(env)
    {
        settings.push((
            "GOOGLE_APPLICATION_CREDENTIALS".into(),
            path.to_string_lossy().into_owned(),
        ));
    }
    if let Some(account) = &flags.wabs_account_name {
        settings.retain(|(name, _)| name != "WABS_ACCOUNT_NAME");
        settings.push(("WABS_ACCOUNT_NAME".into(), account.clone()));
    }
    if flags.aws_instance_profile {
        settings.retain(|(name, _)| name != "AWS_INSTANCE_PROFILE");
        settings.push(("AWS_INSTANCE_PROFILE".into(), "true".into()));
    }
    settings.sort();
    Ok(settings)
}

/// Variables outside wale's own names that hold a path a child `wale` needs.
const PATH_VARS: [&str; 2] = ["GNUPGHOME", "GOOGLE_APPLICATION_CREDENTIALS"];

/// The first non-empty prefix in WAL-E's order, with the name of where it came from.
fn choose_prefix<'a>(
    flags: &'a GlobalFlags,
    env: &'a Env,
) -> Result<(&'static str, &'a str), Error> {
    let from_flags = [
        &flags.file_prefix,
        &flags.gs_prefix,
        &flags.s3_prefix,
        &flags.swift_prefix,
        &flags.wabs_prefix,
    ];
    let flag_count = from_flags.len();
    let candidates = from_flags.into_iter().map(|v| v.as_deref()).chain(
        PREFIX_SOURCES[flag_count..]
            .iter()
            .map(|name| env.get(name)),
    );
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
        .ok_or_else(|| bad("expected a URL such as s3://bucket/path, gs://bucket/path, wabs://container/path, swift://container/path or file:///path"))?;
    let (netloc, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path_prefix = normalize_path_prefix(path);
    match scheme {
        "s3" => {
            if netloc.is_empty() {
                return Err(bad("the bucket name is missing"));
            }
            Ok(StoreConfig::S3(s3_config(netloc, path_prefix, flags, env)?))
        }
        "gs" => {
            if netloc.is_empty() {
                return Err(bad("the bucket name is missing"));
            }
            Ok(StoreConfig::Gcs(gcs_config(netloc, path_prefix, env)?))
        }
        "wabs" => {
            if netloc.is_empty() {
                return Err(bad("the container name is missing"));
            }
            Ok(StoreConfig::Azure(azure_config(
                netloc,
                path_prefix,
                flags,
                env,
            )?))
        }
        "swift" => {
            if netloc.is_empty() {
                return Err(bad("the container name is missing"));
            }
            Ok(StoreConfig::Swift(swift_config(netloc, path_prefix, env)?))
        }
        "file" => {
            if !netloc.is_empty() && !netloc.eq_ignore_ascii_case("localhost") {
                return Err(bad(&file_host_reason(netloc, path)));
            }
            Ok(StoreConfig::File(FileConfig { path_prefix }))
        }
        _ => Err(bad(
            "unknown scheme: expected s3://, gs://, wabs://, swift:// or file://",
        )),
    }
}

/// Why `file://HOST/PATH` is refused, with what was likely meant: the absolute path
/// `/HOST/PATH`, or `HOST/PATH` under the current directory.
fn file_host_reason(host: &str, path: &str) -> String {
    let relative = format!("{host}/{path}");
    let relative = relative.trim_end_matches('/');
    let here = std::env::current_dir()
        .map(|dir| format!("file://{}", dir.join(relative).display()))
        .unwrap_or_else(|_| format!("file:///ABSOLUTE/PATH/TO/{relative}"));
    format!(
        "{host:?} would be a host name, and file:// URLs name no host but localhost: \
         write file:///{relative} for the absolute path /{relative}, or {here} for {relative} \
         under the current directory"
    )
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

/// An `http://` or `https://` base URL, without its trailing `/`.
fn base_url(name: &'static str, value: &str) -> Result<String, Error> {
    let bad = |reason| Error::BadValue {
        name,
        value: value.to_string(),
        reason,
    };
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or_else(|| bad("expected an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("the host is missing"));
    }
    if rest.contains(['?', '#', '@']) {
        return Err(bad(
            "expected a base URL (no query, fragment or user information)",
        ));
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// WAL-E's `parse_boolean_envvar`: empty, `false`, `0` are off; `true`, `1` are on.
pub(super) fn parse_bool(name: &'static str, value: Option<&str>) -> Result<bool, Error> {
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

#[cfg(test)]
pub(crate) mod test_support {
    use super::Env;

    pub(crate) fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    pub(crate) fn s3_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("WALE_S3_PREFIX", "s3://bucket/some/prefix"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "sEcReTvAlUe"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

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
    fn file_urls_with_a_host_are_refused_with_the_likely_intent() {
        let resolve = |url: &str| {
            Config::resolve(&GlobalFlags::default(), &env(&[("WALE_FILE_PREFIX", url)]))
        };
        let err = resolve("file://fixtures/wale-small")
            .unwrap_err()
            .to_string();
        let here = std::env::current_dir().unwrap().join("fixtures/wale-small");
        assert!(
            err.starts_with(
                "WALE_FILE_PREFIX=file://fixtures/wale-small: \"fixtures\" would be a host name"
            ),
            "{err}"
        );
        assert!(
            err.contains("file:///fixtures/wale-small for the absolute path /fixtures/wale-small"),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "file://{} for fixtures/wale-small",
                here.display()
            )),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        for fine in ["file:///x", "file://localhost/x", "file://LOCALHOST/x"] {
            assert_eq!(resolve(fine).unwrap().store.path_prefix(), "x/", "{fine}");
        }
    }

    #[test]
    fn swift_prefixes_choose_the_swift_backend() {
        let swift = env(&[
            ("WALE_SWIFT_PREFIX", "swift://c/p"),
            ("WALE_WABS_PREFIX", "wabs://later/p"),
            ("SWIFT_AUTHURL", "http://127.0.0.1:8080/auth/v1.0"),
            ("SWIFT_AUTH_VERSION", "1"),
            ("SWIFT_USER", "test:tester"),
            ("SWIFT_PASSWORD", "testing"),
        ]);
        let c = Config::resolve(&GlobalFlags::default(), &swift).unwrap();
        let StoreConfig::Swift(config) = &c.store else {
            panic!("{:?}", c.store)
        };
        assert_eq!(
            (config.container.as_str(), c.store.path_prefix()),
            ("c", "p/")
        );
        let flags = GlobalFlags {
            swift_prefix: Some("swift://flag/q".into()),
            ..GlobalFlags::default()
        };
        let c = Config::resolve(&flags, &swift).unwrap();
        assert_eq!(c.store.path_prefix(), "q/");
        let no_container = env(&[("WALE_SWIFT_PREFIX", "swift:///p")]);
        let err = Config::resolve(&GlobalFlags::default(), &no_container).unwrap_err();
        assert!(err.to_string().contains("container name"), "{err}");
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
    fn envdir_settings_carry_swift_settings() {
        let e = env(&[
            ("SWIFT_AUTHURL", "http://127.0.0.1:8080/auth/v1.0"),
            ("SWIFT_PASSWORD", "testing"),
            ("SWIFT_USER_DOMAIN_NAME", "Default"),
            ("HOME", "/root"),
        ]);
        let flags = GlobalFlags {
            swift_prefix: Some("swift://c/p".into()),
            ..GlobalFlags::default()
        };
        let settings = envdir_settings(&flags, &e).unwrap();
        for pair in [
            ("SWIFT_AUTHURL", "http://127.0.0.1:8080/auth/v1.0"),
            ("SWIFT_PASSWORD", "testing"),
            ("SWIFT_USER_DOMAIN_NAME", "Default"),
            ("WALE_SWIFT_PREFIX", "swift://c/p"),
        ] {
            assert!(
                settings.contains(&(pair.0.into(), pair.1.into())),
                "{pair:?} in {settings:?}"
            );
        }
        assert!(!settings.iter().any(|(n, _)| n == "HOME"));
    }

    #[test]
    fn envdir_settings_carry_cloud_credentials_to_the_server() {
        let home = tempfile::tempdir().unwrap();
        let gcloud = home.path().join(".config/gcloud");
        std::fs::create_dir_all(&gcloud).unwrap();
        let adc = gcloud.join("application_default_credentials.json");
        std::fs::write(&adc, "{}").unwrap();
        let home_var = home.path().to_str().unwrap();
        let gs = env(&[("WALE_GS_PREFIX", "gs://b/p"), ("HOME", home_var)]);
        let settings = envdir_settings(&GlobalFlags::default(), &gs).unwrap();
        assert!(settings.contains(&(
            "GOOGLE_APPLICATION_CREDENTIALS".into(),
            adc.to_str().unwrap().into()
        )));
        let azure = env(&[
            ("WALE_WABS_PREFIX", "wabs://c/p"),
            ("WABS_ACCESS_KEY", "c2VjcmV0"),
            ("HOME", home_var),
        ]);
        let flags = GlobalFlags {
            wabs_account_name: Some("acct".into()),
            ..GlobalFlags::default()
        };
        let settings = envdir_settings(&flags, &azure).unwrap();
        assert!(settings.contains(&("WABS_ACCOUNT_NAME".into(), "acct".into())));
        assert!(settings.contains(&("WABS_ACCESS_KEY".into(), "c2VjcmV0".into())));
        assert!(
            !settings
                .iter()
                .any(|(n, _)| n == "GOOGLE_APPLICATION_CREDENTIALS")
        );
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
}
