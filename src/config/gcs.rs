//! Google Cloud Storage settings (`gs://bucket/path`, `WALE_GS_PREFIX`): where requests go
//! and which credentials sign them.
//!
//! WAL-E took credentials from google-auth's default chain. wale reads the same key files
//! (`GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's application-default file) but asks
//! the Compute Engine metadata server only when told to (`WALE_GS_INSTANCE_METADATA`), so
//! a `restore_command` off Google's network never waits for a probe that cannot answer.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{Env, Error, base_url, parse_bool};

/// Google Cloud Storage's JSON API.
pub const GCS_DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// The Compute Engine metadata server's name.
const METADATA_HOST: &str = "metadata.google.internal";
/// Where Google issues OAuth tokens when a key file does not say.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// GCS settings, resolved (Debug never shows secrets).
#[derive(Debug, Clone)]
pub struct GcsConfig {
    /// The bucket (the prefix URL's host part).
    pub bucket: String,
    /// The archive's logical prefix: no leading `/`, a trailing `/` (or empty).
    pub path_prefix: String,
    /// The JSON API's base URL, without a trailing `/`: `WALE_GS_ENDPOINT` or Google's.
    pub endpoint: String,
    /// What signs the requests.
    pub credentials: GcsCredentials,
}

/// The source of GCS access tokens.
#[derive(Clone)]
pub enum GcsCredentials {
    /// A service account's key: tokens from a JWT signed with its private key.
    ServiceAccount {
        /// The file it came from, for messages.
        path: PathBuf,
        /// The account's e-mail address (the JWT's issuer).
        client_email: String,
        /// The PKCS#8 private key, PEM.
        private_key_pem: String,
        /// Where tokens are issued.
        token_uri: String,
    },
    /// A user's refresh token (`gcloud auth application-default login`).
    AuthorizedUser {
        /// The file it came from, for messages.
        path: PathBuf,
        /// The OAuth client.
        client_id: String,
        /// The OAuth client's secret.
        client_secret: String,
        /// The user's refresh token.
        refresh_token: String,
        /// Where tokens are issued.
        token_uri: String,
    },
    /// The Compute Engine metadata server, asked for explicitly.
    InstanceMetadata {
        /// Its host (`GCE_METADATA_HOST`, as google-auth reads it, or Google's name).
        host: String,
    },
    /// No credentials: only with `WALE_GS_ENDPOINT` (an emulator or a private gateway).
    Anonymous,
}

impl fmt::Debug for GcsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GcsCredentials::ServiceAccount {
                path, client_email, ..
            } => f
                .debug_struct("ServiceAccount")
                .field("path", path)
                .field("client_email", client_email)
                .field("private_key_pem", &"<redacted>")
                .finish(),
            GcsCredentials::AuthorizedUser {
                path, client_id, ..
            } => f
                .debug_struct("AuthorizedUser")
                .field("path", path)
                .field("client_id", client_id)
                .field("secrets", &"<redacted>")
                .finish(),
            GcsCredentials::InstanceMetadata { host } => f
                .debug_struct("InstanceMetadata")
                .field("host", host)
                .finish(),
            GcsCredentials::Anonymous => f.write_str("Anonymous"),
        }
    }
}

/// The variable naming a key file, as google-auth reads it.
const KEY_FILE_VAR: &str = "GOOGLE_APPLICATION_CREDENTIALS";

pub(super) fn gcs_config(bucket: &str, path_prefix: String, env: &Env) -> Result<GcsConfig, Error> {
    let endpoint = match env.non_empty("WALE_GS_ENDPOINT") {
        Some(value) => base_url("WALE_GS_ENDPOINT", value)?,
        None => GCS_DEFAULT_ENDPOINT.to_string(),
    };
    let metadata = parse_bool(
        "WALE_GS_INSTANCE_METADATA",
        env.get("WALE_GS_INSTANCE_METADATA"),
    )?;
    let credentials = if let Some(path) = env.non_empty(KEY_FILE_VAR) {
        key_file(KEY_FILE_VAR, Path::new(path))?
    } else if metadata {
        GcsCredentials::InstanceMetadata {
            host: env
                .non_empty("GCE_METADATA_HOST")
                .unwrap_or(METADATA_HOST)
                .to_string(),
        }
    } else if env.non_empty("WALE_GS_ENDPOINT").is_some() {
        GcsCredentials::Anonymous
    } else if let Some(adc) = gcloud_default_file(env).filter(|p| p.is_file()) {
        key_file("gcloud's application-default credentials", &adc)?
    } else {
        return Err(Error::NoGcsCredentials);
    };
    Ok(GcsConfig {
        bucket: bucket.to_string(),
        path_prefix,
        endpoint,
        credentials,
    })
}

/// gcloud's credentials file when [`gcs_config`] would read it (nothing else names
/// credentials), for a child `wale` whose user has another home directory.
pub(super) fn implied_key_file(env: &Env) -> Option<PathBuf> {
    let named = env.non_empty(KEY_FILE_VAR).is_some()
        || env.non_empty("WALE_GS_ENDPOINT").is_some()
        || parse_bool(
            "WALE_GS_INSTANCE_METADATA",
            env.get("WALE_GS_INSTANCE_METADATA"),
        )
        .unwrap_or(true);
    if named {
        return None;
    }
    gcloud_default_file(env).filter(|p| p.is_file())
}

/// `$HOME/.config/gcloud/application_default_credentials.json`, where gcloud leaves a
/// user's credentials (google-auth's second choice).
fn gcloud_default_file(env: &Env) -> Option<PathBuf> {
    let config = match env.non_empty("CLOUDSDK_CONFIG") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env.non_empty("HOME")?).join(".config/gcloud"),
    };
    Some(config.join("application_default_credentials.json"))
}

/// Reads a google-auth key file: a service account's key or a user's refresh token.
fn key_file(name: &'static str, path: &Path) -> Result<GcsCredentials, Error> {
    let bad = |reason: String| Error::BadKeyFile {
        name,
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::KeyFile {
        name,
        path: path.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let field = |key: &str| -> Result<String, Error> {
        json.get(key)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| bad(format!("no \"{key}\"")))
    };
    let token_uri = json
        .get("token_uri")
        .and_then(|v| v.as_str())
        .unwrap_or(DEFAULT_TOKEN_URI)
        .to_string();
    match json.get("type").and_then(|v| v.as_str()) {
        Some("service_account") => Ok(GcsCredentials::ServiceAccount {
            path: path.to_path_buf(),
            client_email: field("client_email")?,
            private_key_pem: field("private_key")?,
            token_uri,
        }),
        Some("authorized_user") => Ok(GcsCredentials::AuthorizedUser {
            path: path.to_path_buf(),
            client_id: field("client_id")?,
            client_secret: field("client_secret")?,
            refresh_token: field("refresh_token")?,
            token_uri,
        }),
        Some(other) => Err(bad(format!(
            "credentials of type \"{other}\" are not supported (service_account or authorized_user)"
        ))),
        None => Err(bad("no \"type\"".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::env;

    #[test]
    fn credentials_follow_google_auth_without_probing() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sa.json");
        std::fs::write(
            &key,
            r#"{"type":"service_account","client_email":"a@p.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----\n"}"#,
        )
        .unwrap();
        let key_var = key.to_str().unwrap();
        let with_key = gcs_config("b", "p/".into(), &env(&[(KEY_FILE_VAR, key_var)])).unwrap();
        assert!(matches!(
            &with_key.credentials,
            GcsCredentials::ServiceAccount { token_uri, .. } if token_uri == DEFAULT_TOKEN_URI
        ));
        assert_eq!(with_key.endpoint, GCS_DEFAULT_ENDPOINT);
        assert!(!format!("{with_key:?}").contains("PRIVATE KEY"));

        let emulator = env(&[("WALE_GS_ENDPOINT", "http://127.0.0.1:9023/")]);
        let config = gcs_config("b", String::new(), &emulator).unwrap();
        assert_eq!(config.endpoint, "http://127.0.0.1:9023");
        assert!(matches!(config.credentials, GcsCredentials::Anonymous));

        let metadata = env(&[
            ("WALE_GS_INSTANCE_METADATA", "true"),
            ("HOME", "/nonexistent"),
        ]);
        assert!(matches!(
            gcs_config("b", String::new(), &metadata).unwrap().credentials,
            GcsCredentials::InstanceMetadata { host } if host == METADATA_HOST
        ));
        let nothing = env(&[("HOME", "/nonexistent")]);
        let err = gcs_config("b", String::new(), &nothing).unwrap_err();
        assert!(err.to_string().contains(KEY_FILE_VAR), "{err}");
    }

    #[test]
    fn bad_key_files_and_endpoints_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.json");
        std::fs::write(&key, r#"{"type":"external_account"}"#).unwrap();
        let err = gcs_config(
            "b",
            String::new(),
            &env(&[(KEY_FILE_VAR, key.to_str().unwrap())]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("k.json") && err.contains("external_account"),
            "{err}"
        );
        let missing = dir.path().join("absent.json");
        let err = gcs_config(
            "b",
            String::new(),
            &env(&[(KEY_FILE_VAR, missing.to_str().unwrap())]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("absent.json"), "{err}");
        for bad in ["127.0.0.1:9023", "ftp://x", "http://", "http://h/?x=1"] {
            assert!(
                gcs_config("b", String::new(), &env(&[("WALE_GS_ENDPOINT", bad)])).is_err(),
                "{bad}"
            );
        }
    }
}
