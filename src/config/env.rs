//! The environment a command sees: the process's, overlaid with an envdir directory.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Error;

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
    ///
    /// Files holding a secret (see [`holds_secret`]) that group or others may read are
    /// named in one warning, as ssh warns about a private key others can read.
    pub fn apply_envdir(&mut self, dir: &Path) -> Result<(), Error> {
        let envdir_err = |path: &Path, source| Error::Envdir {
            path: path.to_path_buf(),
            source,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| envdir_err(dir, e))?;
        let mut exposed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| envdir_err(dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || name.contains('=') {
                continue;
            }
            let path = entry.path();
            let metadata = std::fs::metadata(&path).map_err(|e| envdir_err(&path, e))?;
            if metadata.is_dir() {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| envdir_err(&path, e))?;
            if bytes.is_empty() {
                self.vars.remove(&name);
                continue;
            }
            if holds_secret(&name) && metadata.permissions().mode() & 0o044 != 0 {
                exposed.push((path.clone(), metadata.permissions().mode() & 0o777));
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
        warn_exposed(&mut exposed);
        Ok(())
    }

    /// Every variable, in no particular order.
    pub(crate) fn vars(&self) -> impl Iterator<Item = (&String, &String)> {
        self.vars.iter()
    }

    /// The value of a variable, `None` when unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The value of a variable when set and not empty.
    pub(crate) fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }
}

/// Whether a variable holds a secret: a secret key, password, passphrase or token, or a
/// key itself (`WABS_ACCESS_KEY`, `WALE_PGP_KEY`), not a key's id or path.
pub fn holds_secret(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    ["SECRET", "PASSWORD", "PASSPHRASE", "TOKEN"]
        .iter()
        .any(|word| name.contains(word))
        || name.ends_with("_KEY")
}

/// One warning naming every secret file group or others can read, with its mode.
fn warn_exposed(exposed: &mut [(PathBuf, u32)]) {
    if exposed.is_empty() {
        return;
    }
    exposed.sort();
    let files: Vec<String> = exposed
        .iter()
        .map(|(path, mode)| format!("{} (mode {mode:04o})", path.display()))
        .collect();
    tracing::warn!(
        "envdir secrets readable by group or others: {}; make them private with chmod 600 (and the directory chmod 700)",
        files.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::holds_secret;
    use crate::config::test_support::*;

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

    #[test]
    fn secrets_are_told_from_names_and_ids() {
        for secret in [
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "SWIFT_PASSWORD",
            "WABS_ACCESS_KEY",
            "WABS_SAS_TOKEN",
            "WALE_PGP_KEY",
            "WALG_PGP_KEY",
            "WALE_PGP_KEY_PASSPHRASE",
            "PGPASSWORD",
        ] {
            assert!(holds_secret(secret), "{secret}");
        }
        for plain in [
            "AWS_ACCESS_KEY_ID",
            "WALE_S3_PREFIX",
            "WALE_PGP_KEY_PATH",
            "WALE_GPG_KEY_ID",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "SWIFT_USER",
            "AWS_REGION",
        ] {
            assert!(!holds_secret(plain), "{plain}");
        }
    }
}
