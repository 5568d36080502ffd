//! Decryption of GPG-encrypted WAL-E objects: `gpg(lzop(data))`, one OpenPGP message per
//! object (a public-key session key packet, then integrity-protected data).
//!
//! [`Decryptor::open`] turns an object's body into its plaintext as a stream, in process
//! with an armored secret key (unlocked once per process, whatever the number of
//! objects), or through `gpg -d -q --batch` as WAL-E does. Memory stays bounded by a
//! buffer: nothing is held back to check the message first, so the plaintext is
//! provisional until the reader reports the end. A failed integrity check (the MDC), a
//! cut message or a `gpg` failure is an error on that last read, before the caller has
//! published anything: `wal-fetch` renames only after the end, `backup-fetch` reads each
//! partition to its end (and a failed partition leaves the restore unstartable).
//!
//! A failure of the body itself (network, disk) is returned as it was, so that it is
//! retried like any read failure instead of being taken for corruption.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use pgp::composed::{DecryptionOptions, Deserializable, Esk, Message, SignedSecretKey, TheRing};
use pgp::types::{Password, Seipdv1ReadMode};

use crate::config::Decryption;

/// Why an object could not be decrypted. Carried inside `io::Error`s through the decoders
/// and classified as corruption (exit 202) by [`crate::error::Error::from_read`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object is encrypted and no key is configured.
    #[error(
        "GPG-encrypted (WAL-E's WALE_GPG_KEY_ID) but no key is configured: set WALE_PGP_KEY_PATH to an armored secret key (WALE_PGP_KEY_PASSPHRASE if it has one), or WALE_GPG_KEY_ID to decrypt with gpg as WAL-E did"
    )]
    NoKey,
    /// The message is not for the configured key.
    #[error("encrypted to key {recipients}, which {origin} does not hold")]
    WrongKey {
        /// The key ids the message names.
        recipients: String,
        /// Where the configured key came from.
        origin: String,
    },
    /// The OpenPGP data is damaged: integrity check, truncation, bad packets.
    #[error("cannot decrypt: {0}")]
    Damaged(String),
    /// `gpg -d` failed.
    #[error("gpg -d -q --batch failed ({status}): {stderr}")]
    Gpg {
        /// Its exit status.
        status: String,
        /// What it said, on one line.
        stderr: String,
    },
}

/// A configuration problem with the key: reported as a usage error, not as corruption.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct KeyError {
    origin: String,
    reason: KeyProblem,
}

/// Why the configured key cannot be used: the secret key (kept for the whole process,
/// since it is unlocked once), or `gpg`, which holds it for WAL-E's way.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyProblem {
    /// Not an armored secret key (the parser's words).
    #[error("not an armored OpenPGP secret key: {0}")]
    NotArmored(String),
    /// Locked, and no passphrase configured.
    #[error("the secret key is protected by a passphrase: set WALE_PGP_KEY_PASSPHRASE")]
    NoPassphrase,
    /// The passphrase configured does not unlock it.
    #[error("wrong passphrase for the secret key (WALE_PGP_KEY_PASSPHRASE)")]
    WrongPassphrase,
    /// `gpg` cannot be started.
    #[error("cannot run gpg: {0} (install gnupg, or give wale the key with WALE_PGP_KEY_PATH)")]
    CannotRunGpg(Arc<io::Error>),
}

/// Decrypts objects as configured; one per process, shared by all downloads.
pub struct Decryptor {
    decryption: Decryption,
    key: OnceLock<Result<Arc<SignedSecretKey>, KeyProblem>>,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("decryption", &self.decryption)
            .finish_non_exhaustive()
    }
}

/// The configured way to decrypt, as a boxed plaintext stream.
pub type Plaintext = Box<dyn Read + Send>;

impl Decryptor {
    /// A decryptor for these settings; the key is parsed and unlocked at first use.
    pub fn new(decryption: Decryption) -> Decryptor {
        Decryptor {
            decryption,
            key: OnceLock::new(),
        }
    }

    /// Starts decrypting `body`, an OpenPGP message. Errors here are a key problem
    /// ([`KeyError`] inside the `io::Error`), a message not for this key, or the body
    /// failing before the message could be parsed.
    pub fn open(&self, body: impl BufRead + Send + 'static) -> io::Result<Plaintext> {
        match &self.decryption {
            Decryption::Key { origin, .. } => {
                let key = self.unlocked_key().map_err(|reason| {
                    io::Error::other(KeyError {
                        origin: origin.clone(),
                        reason,
                    })
                })?;
                open_native(body, &key, origin)
            }
            Decryption::GpgCommand { home } => {
                GpgReader::spawn(body, home.as_deref()).map(|r| Box::new(r) as Plaintext)
            }
        }
    }

    /// The secret key, parsed and unlocked once per process (the passphrase's key
    /// derivation can take most of a second).
    fn unlocked_key(&self) -> Result<Arc<SignedSecretKey>, KeyProblem> {
        self.key
            .get_or_init(|| {
                let Decryption::Key {
                    armored,
                    passphrase,
                    ..
                } = &self.decryption
                else {
                    unreachable!("only native decryption has a key");
                };
                unlock(armored, passphrase.as_deref()).map(Arc::new)
            })
            .clone()
    }
}

/// Parses an armored secret key and removes its passphrase protection in memory.
fn unlock(armored: &str, passphrase: Option<&str>) -> Result<SignedSecretKey, KeyProblem> {
    let (mut key, _) = SignedSecretKey::from_armor_single(armored.as_bytes())
        .map_err(|e| KeyProblem::NotArmored(e.to_string()))?;
    let locked = key.primary_key.secret_params().is_encrypted()
        || key
            .secret_subkeys
            .iter()
            .any(|s| s.key.secret_params().is_encrypted());
    if !locked {
        return Ok(key);
    }
    let Some(passphrase) = passphrase else {
        return Err(KeyProblem::NoPassphrase);
    };
    let password = Password::from(passphrase);
    let wrong = |_| KeyProblem::WrongPassphrase;
    key.primary_key.remove_password(&password).map_err(wrong)?;
    for subkey in &mut key.secret_subkeys {
        subkey.key.remove_password(&password).map_err(wrong)?;
    }
    Ok(key)
}

/// The first failure of the body under a decryptor, kept aside so that it is returned
/// as it was rather than as the decryptor's view of it.
type SourceFailure = Arc<Mutex<Option<io::Error>>>;

fn take_source_failure(slot: &SourceFailure) -> Option<io::Error> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// The body as the decryptor reads it: failures are recorded and replaced by a stand-in.
struct Tapped<R> {
    inner: R,
    failure: SourceFailure,
}

impl<R> Tapped<R> {
    fn record(&self, err: io::Error) -> io::Error {
        let kind = err.kind();
        let mut slot = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(err);
        io::Error::new(kind, "reading the object failed")
    }
}

impl<R> std::fmt::Debug for Tapped<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tapped")
    }
}

impl<R: Read> Read for Tapped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| self.record(e))
    }
}

impl<R: BufRead> BufRead for Tapped<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        // Borrowing rules: find out about an error first, then return the buffer.
        if let Err(err) = self.inner.fill_buf() {
            return Err(self.record(err));
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount);
    }
}

fn open_native(
    body: impl BufRead + Send + 'static,
    key: &SignedSecretKey,
    origin: &str,
) -> io::Result<Plaintext> {
    let failure = SourceFailure::default();
    let source = Tapped {
        inner: body,
        failure: failure.clone(),
    };
    let damaged = |failure: &SourceFailure, e: pgp::errors::Error| {
        take_source_failure(failure)
            .unwrap_or_else(|| io::Error::other(Error::Damaged(e.to_string())))
    };
    let message = Message::from_bytes(source).map_err(|e| damaged(&failure, e))?;
    let recipients = recipients(&message);
    let ring = TheRing {
        secret_keys: vec![key],
        decrypt_options: DecryptionOptions::new().set_seipdv1_read_mode(Seipdv1ReadMode::Streaming),
        ..Default::default()
    };
    let (mut message, _) = match message.decrypt_the_ring(ring, true) {
        Ok(decrypted) => decrypted,
        Err(pgp::errors::Error::MissingKey) => {
            return Err(io::Error::other(Error::WrongKey {
                recipients,
                origin: origin.to_string(),
            }));
        }
        Err(e) => return Err(damaged(&failure, e)),
    };
    if message.is_compressed() {
        message = message.decompress().map_err(|e| damaged(&failure, e))?;
    }
    Ok(Box::new(NativeReader {
        message: Some(message),
        failure,
    }))
}

/// The key ids a message is encrypted to, for the wrong-key message.
fn recipients(message: &Message<'_>) -> String {
    let Message::Encrypted { esk, .. } = message else {
        return "(none)".into();
    };
    let ids: Vec<String> = esk
        .iter()
        .filter_map(|esk| match esk {
            Esk::PublicKeyEncryptedSessionKey(pkesk) => pkesk.id().ok().map(|id| {
                id.as_ref()
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect::<String>()
            }),
            Esk::SymKeyEncryptedSessionKey(_) => Some("(a passphrase)".into()),
        })
        .collect();
    if ids.is_empty() {
        "(none)".into()
    } else {
        ids.join(", ")
    }
}

/// rPGP's plaintext, fused: it must not be read again after an error.
struct NativeReader {
    message: Option<Message<'static>>,
    failure: SourceFailure,
}

impl Read for NativeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(message) = self.message.as_mut() else {
            return Err(io::Error::other(Error::Damaged(
                "read after a failure".into(),
            )));
        };
        match message.read(buf) {
            Ok(n) => Ok(n),
            Err(err) => {
                self.message = None;
                Err(take_source_failure(&self.failure)
                    .unwrap_or_else(|| io::Error::other(Error::Damaged(err.to_string()))))
            }
        }
    }
}

/// How much of `gpg`'s stderr is kept for the error message.
const GPG_STDERR_LIMIT: usize = 4096;

/// `gpg -d -q --batch` with the body on its stdin and the plaintext on its stdout; its
/// exit status is checked at the end of the plaintext.
struct GpgReader {
    child: Child,
    stdout: BufReader<ChildStdout>,
    feeder: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    failure: SourceFailure,
    finished: bool,
}

impl GpgReader {
    fn spawn(body: impl BufRead + Send + 'static, home: Option<&Path>) -> io::Result<GpgReader> {
        let mut command = Command::new("gpg");
        command.args(["-d", "-q", "--batch"]);
        if let Some(home) = home {
            command.env("GNUPGHOME", home);
        }
        if let Some((uid, gid)) = keyring_owner_to_become(home) {
            // As root in another user's keyring (`wale restore` with the server owner's
            // GNUPGHOME): gpg runs as that user, so that the agent it starts and the files
            // it writes there stay usable by the owner's own restore_command.
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::other(KeyError {
                    origin: "WALE_GPG_KEY_ID".into(),
                    reason: KeyProblem::CannotRunGpg(Arc::new(e)),
                })
            })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let failure = SourceFailure::default();
        let feeder = {
            let failure = failure.clone();
            std::thread::spawn(move || feed(body, stdin, &failure))
        };
        let stderr = std::thread::spawn(move || {
            let mut kept = Vec::new();
            let _ = (&mut stderr)
                .take(GPG_STDERR_LIMIT as u64)
                .read_to_end(&mut kept);
            let _ = io::copy(&mut stderr, &mut io::sink());
            kept
        });
        Ok(GpgReader {
            child,
            stdout: BufReader::with_capacity(256 * 1024, stdout),
            feeder: Some(feeder),
            stderr: Some(stderr),
            failure,
            finished: false,
        })
    }

    /// At the end of the plaintext: the body must have been read whole and gpg must have
    /// succeeded (it checks the integrity code only at the end).
    fn finish(&mut self) -> io::Result<()> {
        self.finished = true;
        if let Some(feeder) = self.feeder.take() {
            let _ = feeder.join();
        }
        let status = self.child.wait()?;
        let said = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if let Some(failure) = take_source_failure(&self.failure) {
            return Err(failure);
        }
        if status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&said);
        let said: Vec<&str> = said
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        Err(io::Error::other(Error::Gpg {
            status: status.to_string(),
            stderr: if said.is_empty() {
                "no message".into()
            } else {
                said.join("; ")
            },
        }))
    }
}

/// The owner of the keyring, when this process is root and the keyring belongs to another
/// user.
fn keyring_owner_to_become(home: Option<&Path>) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if crate::users::effective_uid() != 0 {
        return None;
    }
    let home = home?;
    let meta = std::fs::metadata(home).ok()?;
    (meta.uid() != 0).then(|| (meta.uid(), meta.gid()))
}

/// Copies the body into gpg's stdin; a failure to read the body is recorded, one to
/// write means gpg stopped (its status tells why).
fn feed(mut body: impl BufRead, mut stdin: std::process::ChildStdin, failure: &SourceFailure) {
    loop {
        let chunk = match body.fill_buf() {
            Ok([]) => return,
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
                return;
            }
        };
        let n = chunk.len();
        if stdin.write_all(chunk).is_err() {
            return;
        }
        body.consume(n);
    }
}

impl Read for GpgReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.finish()?;
        }
        Ok(n)
    }
}

impl Drop for GpgReader {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_problems_are_named_without_the_key() {
        let err = unlock("not a key", Some("hunter2")).unwrap_err();
        assert!(matches!(err, KeyProblem::NotArmored(_)), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("not an armored OpenPGP secret key"), "{err}");
        assert!(!err.contains("hunter2"));
    }

    #[test]
    fn a_source_failure_is_returned_as_it_was() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "original"))
            }
        }
        let failure = SourceFailure::default();
        let mut tapped = Tapped {
            inner: BufReader::new(Failing),
            failure: failure.clone(),
        };
        let stand_in = tapped.fill_buf().unwrap_err();
        assert_eq!(stand_in.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(
            take_source_failure(&failure).unwrap().to_string(),
            "original"
        );
    }
}
