//! Which key decrypts GPG-encrypted archives (WAL-E's `WALE_GPG_KEY_ID`), if any.
//!
//! Two ways, as the operator has the key:
//! * an armored secret key given to wale itself (`WALE_PGP_KEY_PATH` or `WALE_PGP_KEY`,
//!   with `WALE_PGP_KEY_PASSPHRASE`; WAL-G's `WALG_PGP_*` names are accepted too): no
//!   `gpg`, no agent, no keyring;
//! * WAL-E's own way, when only `WALE_GPG_KEY_ID`/`--gpg-key-id` is set (even empty, as
//!   WAL-E): every object goes through `gpg -d -q --batch`, with the user's `GNUPGHOME`.

use std::path::PathBuf;

use super::{Env, Error, GlobalFlags};

/// wale's names for the native key settings, then WAL-G's, in order of precedence.
pub const KEY_PATH_VARS: [&str; 2] = ["WALE_PGP_KEY_PATH", "WALG_PGP_KEY_PATH"];
/// Variables holding the armored key itself.
pub const KEY_VARS: [&str; 2] = ["WALE_PGP_KEY", "WALG_PGP_KEY"];
/// Variables holding the key's passphrase.
pub const PASSPHRASE_VARS: [&str; 2] = ["WALE_PGP_KEY_PASSPHRASE", "WALG_PGP_KEY_PASSPHRASE"];

/// How encrypted objects are decrypted.
#[derive(Clone)]
pub enum Decryption {
    /// In process, with an armored secret key.
    Key {
        /// The armored key (`-----BEGIN PGP PRIVATE KEY BLOCK-----`…).
        armored: String,
        /// Where it came from, for messages: a variable name, or `NAME=path`.
        origin: String,
        /// The passphrase protecting it, if any.
        passphrase: Option<String>,
    },
    /// Through `gpg -d -q --batch`, as WAL-E does.
    GpgCommand {
        /// `GNUPGHOME` as configured (an envdir's value included), passed to `gpg`.
        home: Option<PathBuf>,
    },
}

// Key material and passphrases never reach a log, an error or a panic message.
impl std::fmt::Debug for Decryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decryption::Key {
                origin, passphrase, ..
            } => f
                .debug_struct("Key")
                .field("origin", origin)
                .field("armored", &"<redacted>")
                .field("passphrase", &passphrase.as_ref().map(|_| "<redacted>"))
                .finish(),
            Decryption::GpgCommand { home } => {
                f.debug_struct("GpgCommand").field("home", home).finish()
            }
        }
    }
}

/// The decryption the flags and environment ask for, `None` for plain archives.
pub(super) fn decryption(flags: &GlobalFlags, env: &Env) -> Result<Option<Decryption>, Error> {
    let first = |names: &[&'static str]| {
        names
            .iter()
            .find_map(|name| Some((*name, env.non_empty(name)?)))
    };
    let passphrase = first(&PASSPHRASE_VARS).map(|(_, value)| value.to_string());
    let key = match (first(&KEY_PATH_VARS), first(&KEY_VARS)) {
        (Some((path_var, _)), Some((key_var, _))) => {
            return Err(Error::Conflict(format!(
                "{path_var} and {key_var} are both set: give the secret key one way"
            )));
        }
        (Some((name, path)), None) => {
            let path = PathBuf::from(path);
            let armored = std::fs::read_to_string(&path).map_err(|source| Error::KeyFile {
                name,
                path: path.clone(),
                source,
            })?;
            Some(Decryption::Key {
                armored,
                origin: format!("{name}={}", path.display()),
                passphrase,
            })
        }
        (None, Some((name, armored))) => Some(Decryption::Key {
            armored: armored.to_string(),
            origin: name.to_string(),
            passphrase,
        }),
        (None, None) => None,
    };
    if key.is_some() {
        return Ok(key);
    }
    let key_id_set = flags.gpg_key_id.is_some() || env.get("WALE_GPG_KEY_ID").is_some();
    Ok(key_id_set.then(|| Decryption::GpgCommand {
        home: env.non_empty("GNUPGHOME").map(PathBuf::from),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use std::path::Path;

    #[test]
    fn the_native_key_wins_and_the_key_id_alone_means_gpg() {
        let none = env(&[]);
        assert!(
            decryption(&GlobalFlags::default(), &none)
                .unwrap()
                .is_none()
        );
        let empty_id = env(&[("WALE_GPG_KEY_ID", "")]);
        assert!(matches!(
            decryption(&GlobalFlags::default(), &empty_id).unwrap(),
            Some(Decryption::GpgCommand { home: None })
        ));
        let flag = GlobalFlags {
            gpg_key_id: Some("ABC".into()),
            ..Default::default()
        };
        assert!(matches!(
            decryption(&flag, &none).unwrap(),
            Some(Decryption::GpgCommand { home: None })
        ));
        let with_home = env(&[("WALE_GPG_KEY_ID", "ABC"), ("GNUPGHOME", "/srv/gnupg")]);
        assert!(matches!(
            decryption(&GlobalFlags::default(), &with_home).unwrap(),
            Some(Decryption::GpgCommand { home: Some(home) }) if home == Path::new("/srv/gnupg")
        ));
        let inline = env(&[
            ("WALE_GPG_KEY_ID", "ABC"),
            ("WALG_PGP_KEY", "-----BEGIN PGP PRIVATE KEY BLOCK-----"),
            ("WALG_PGP_KEY_PASSPHRASE", "sesame"),
        ]);
        let got = decryption(&GlobalFlags::default(), &inline)
            .unwrap()
            .unwrap();
        let Decryption::Key {
            origin, passphrase, ..
        } = &got
        else {
            panic!("{got:?}");
        };
        assert_eq!(origin, "WALG_PGP_KEY");
        assert_eq!(passphrase.as_deref(), Some("sesame"));
        let shown = format!("{got:?}");
        assert!(
            !shown.contains("sesame") && !shown.contains("BEGIN"),
            "{shown}"
        );
    }

    #[test]
    fn key_files_are_read_and_ambiguity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.asc");
        std::fs::write(&path, "armored").unwrap();
        let path_text = path.to_str().unwrap();
        let by_path = env(&[("WALE_PGP_KEY_PATH", path_text)]);
        assert!(matches!(
            decryption(&GlobalFlags::default(), &by_path).unwrap(),
            Some(Decryption::Key { armored, .. }) if armored == "armored"
        ));
        let missing = env(&[("WALG_PGP_KEY_PATH", "/no/such/key.asc")]);
        let err = decryption(&GlobalFlags::default(), &missing)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("WALG_PGP_KEY_PATH") && err.contains("/no/such/key.asc"),
            "{err}"
        );
        let both = env(&[("WALE_PGP_KEY_PATH", path_text), ("WALE_PGP_KEY", "x")]);
        assert!(decryption(&GlobalFlags::default(), &both).is_err());
    }
}
