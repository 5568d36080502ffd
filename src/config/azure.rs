//! Azure Blob Storage settings (`wabs://container/path`, `WALE_WABS_PREFIX`): the account,
//! its key or SAS token, and the blob service's URL.

use std::fmt;

use super::{Env, Error, GlobalFlags, base_url};

/// Azure settings, resolved (Debug never shows secrets).
#[derive(Debug, Clone)]
pub struct AzureConfig {
    /// The storage account: `-a/--wabs-account-name` or `WABS_ACCOUNT_NAME`.
    pub account: String,
    /// The container (the prefix URL's host part).
    pub container: String,
    /// The archive's prefix: no leading `/`, a trailing `/` (or empty). Blob names are
    /// this plus the logical key, as WAL-E wrote them.
    pub path_prefix: String,
    /// The blob service's URL, without a trailing `/`: `WALE_WABS_ENDPOINT` (which
    /// includes the account for path-style services such as Azurite), or
    /// `https://<account>.blob.core.windows.net` as WAL-E always used.
    pub endpoint: String,
    /// What authorizes the requests.
    pub credentials: AzureCredentials,
}

/// How requests are authorized.
#[derive(Clone)]
pub enum AzureCredentials {
    /// `WABS_ACCESS_KEY`: the account key (decoded), signing each request (Shared Key).
    SharedKey(Vec<u8>),
    /// `WABS_SAS_TOKEN`: a shared access signature, added to each request's query.
    Sas(String),
}

impl fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureCredentials::SharedKey(_) => f.write_str("SharedKey(<redacted>)"),
            AzureCredentials::Sas(_) => f.write_str("Sas(<redacted>)"),
        }
    }
}

pub(super) fn azure_config(
    container: &str,
    path_prefix: String,
    flags: &GlobalFlags,
    env: &Env,
) -> Result<AzureConfig, Error> {
    let account = flags
        .wabs_account_name
        .as_deref()
        .filter(|a| !a.is_empty())
        .or_else(|| env.non_empty("WABS_ACCOUNT_NAME"))
        .ok_or(Error::Missing(
            "no Azure storage account: set WABS_ACCOUNT_NAME (or pass -a/--wabs-account-name)",
        ))?
        .to_string();
    // WAL-E uses the key when both are set.
    let credentials = if let Some(key) = env.non_empty("WABS_ACCESS_KEY") {
        let decoded =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key.trim())
                .map_err(|_| {
                    Error::Missing(
                        "WABS_ACCESS_KEY is not a base64 account key (as the portal shows it)",
                    )
                })?;
        AzureCredentials::SharedKey(decoded)
    } else if let Some(token) = env.non_empty("WABS_SAS_TOKEN") {
        AzureCredentials::Sas(token.trim_start_matches('?').to_string())
    } else {
        return Err(Error::Missing(
            "no Azure credentials: set WABS_ACCESS_KEY or WABS_SAS_TOKEN",
        ));
    };
    let endpoint = match env.non_empty("WALE_WABS_ENDPOINT") {
        Some(value) => base_url("WALE_WABS_ENDPOINT", value)?,
        None => format!("https://{account}.blob.core.windows.net"),
    };
    Ok(AzureConfig {
        account,
        container: container.to_string(),
        path_prefix,
        endpoint,
        credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::env;

    #[test]
    fn account_key_and_endpoint_follow_wal_e() {
        let e = env(&[
            ("WABS_ACCOUNT_NAME", "acct"),
            ("WABS_ACCESS_KEY", "c2VjcmV0"),
            ("WABS_SAS_TOKEN", "sv=1&sig=x"),
        ]);
        let config = azure_config("c", "p/".into(), &GlobalFlags::default(), &e).unwrap();
        assert_eq!(config.endpoint, "https://acct.blob.core.windows.net");
        assert!(matches!(&config.credentials, AzureCredentials::SharedKey(k) if k == b"secret"));
        assert!(!format!("{config:?}").contains("c2VjcmV0"));

        let flags = GlobalFlags {
            wabs_account_name: Some("flagged".into()),
            ..GlobalFlags::default()
        };
        let e = env(&[
            ("WABS_ACCOUNT_NAME", "acct"),
            ("WABS_SAS_TOKEN", "?sv=1&sig=x"),
            (
                "WALE_WABS_ENDPOINT",
                "http://127.0.0.1:10000/devstoreaccount1/",
            ),
        ]);
        let config = azure_config("c", String::new(), &flags, &e).unwrap();
        assert_eq!(config.account, "flagged");
        assert_eq!(config.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert!(matches!(&config.credentials, AzureCredentials::Sas(t) if t == "sv=1&sig=x"));
    }

    #[test]
    fn missing_or_bad_settings_are_named_without_secrets() {
        let none = azure_config("c", String::new(), &GlobalFlags::default(), &env(&[]));
        assert!(none.unwrap_err().to_string().contains("WABS_ACCOUNT_NAME"));
        let no_key = env(&[("WABS_ACCOUNT_NAME", "a")]);
        let err = azure_config("c", String::new(), &GlobalFlags::default(), &no_key).unwrap_err();
        assert!(err.to_string().contains("WABS_SAS_TOKEN"), "{err}");
        let bad_key = env(&[
            ("WABS_ACCOUNT_NAME", "a"),
            ("WABS_ACCESS_KEY", "not base64!"),
        ]);
        let err = azure_config("c", String::new(), &GlobalFlags::default(), &bad_key)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("WABS_ACCESS_KEY") && !err.contains("not base64!"),
            "{err}"
        );
    }
}
