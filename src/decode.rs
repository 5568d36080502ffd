//! The decode chain every object goes through: body → (decryption, when the object is
//! encrypted) → lzop. Whether an object is encrypted is told by its first bytes, object
//! by object, so a plain archive never pays for a configured key and an encrypted one is
//! named as such instead of failing as "not lzop".

use std::io::{self, BufRead, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::Config;
use crate::decrypt::{self, Decryptor};
use crate::error::Error;
use crate::lzop;
use crate::storage::ObjectReader;

/// Buffer over an object's body read whole: the decoders' header reads are a few bytes.
const BODY_BUFFER: usize = 256 * 1024;

/// Buffer over decrypted plaintext: the lzop decoder's header reads are a few bytes each.
const PLAINTEXT_BUFFER: usize = 256 * 1024;

/// How this process decodes objects: lzop's options and the decryptor, if a key is
/// configured. Cheap to clone; one per process.
#[derive(Debug, Clone, Default)]
pub struct Decoding {
    /// How lzop streams are decoded.
    pub lzop: lzop::Options,
    decryptor: Option<Arc<Decryptor>>,
    plain_warned: Arc<AtomicBool>,
}

/// What the first bytes of an object say it is.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Lzop,
    OpenPgp,
    Other,
}

impl Decoding {
    /// The decoding the configuration asks for.
    pub fn new(config: &Config, lzop: lzop::Options) -> Decoding {
        Decoding {
            lzop,
            decryptor: config
                .decryption
                .clone()
                .map(|d| Arc::new(Decryptor::new(d))),
            plain_warned: Arc::default(),
        }
    }

    /// An object decoded whole into memory (history files, backup labels), on a
    /// blocking thread: at most `limit` bytes of it (the caller judges an object that
    /// reaches the limit), `capacity` reserved up front.
    pub async fn read_whole(
        &self,
        object: ObjectReader,
        capacity: usize,
        limit: u64,
    ) -> Result<Vec<u8>, Error> {
        let url = object.url.clone();
        self.decode_whole(url, object.into_blocking_read(), capacity, limit)
            .await
    }

    /// [`Decoding::read_whole`] of a body already coming in (from
    /// [`ObjectReader::into_blocking_read_ahead`]), so that a caller can let downloads
    /// run while it waits for its turn to decode. Blocks are decoded and appended whole:
    /// no byte of the buffer is zeroed first nor copied twice.
    pub async fn decode_whole(
        &self,
        url: String,
        body: Box<dyn Read + Send>,
        capacity: usize,
        limit: u64,
    ) -> Result<Vec<u8>, Error> {
        let decoding = self.clone();
        tokio::task::spawn_blocking(move || {
            let body = io::BufReader::with_capacity(BODY_BUFFER, body);
            let mut decoder = decoding
                .decoder(body, &url)
                .map_err(|e| Error::from_read(&url, e))?;
            let mut capped = Capped {
                bytes: Vec::with_capacity(capacity),
                limit,
            };
            match decoder.decode_to(&mut capped) {
                // A write fails only at the limit: what reached it is the caller's to judge.
                Ok(_) | Err(lzop::DecodeToError::Write(_)) => Ok(capped.bytes),
                Err(lzop::DecodeToError::Decode(bad)) => Err(Error::from_decode(&url, bad)),
            }
        })
        .await?
    }

    /// The lzop decoder over an object's plaintext. `url` names the object in the one
    /// warning given when a key is configured but objects are not encrypted.
    pub fn decoder(
        &self,
        mut body: impl BufRead + Send + 'static,
        url: &str,
    ) -> io::Result<lzop::Decoder<Box<dyn Read + Send>>> {
        let kind = match body.fill_buf()? {
            [] => Kind::Other,
            [first, ..] if *first == lzop::MAGIC[0] => Kind::Lzop,
            [first, ..] if lzop::looks_like_openpgp(*first) => Kind::OpenPgp,
            _ => Kind::Other,
        };
        let plaintext: Box<dyn Read + Send> = match (kind, &self.decryptor) {
            (Kind::OpenPgp, None) => return Err(io::Error::other(decrypt::Error::NoKey)),
            (Kind::OpenPgp, Some(decryptor)) => Box::new(io::BufReader::with_capacity(
                PLAINTEXT_BUFFER,
                decryptor.open(body)?,
            )),
            (Kind::Lzop, Some(_)) => {
                if !self.plain_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "{url} is not encrypted although a decryption key is configured; reading plain objects as they are"
                    );
                }
                Box::new(body)
            }
            _ => Box::new(body),
        };
        Ok(lzop::Decoder::with_options(plaintext, self.lzop))
    }
}

/// A buffer that takes at most `limit` bytes; a write past it fails.
struct Capped {
    bytes: Vec<u8>,
    limit: u64,
}

impl io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.limit.saturating_sub(self.bytes.len() as u64);
        if room == 0 && !buf.is_empty() {
            return Err(io::Error::other("the object reached its size limit"));
        }
        let taken = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.bytes.extend_from_slice(&buf[..taken]);
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lzop::tests::COMPRESSED_64_A;
    use crate::storage::Storage;
    use crate::storage::fs::FileStore;

    async fn read_whole(bytes: &[u8], capacity: usize, limit: u64) -> Result<Vec<u8>, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object.lzo");
        std::fs::write(&path, bytes).unwrap();
        let key = path.to_str().unwrap().trim_start_matches('/');
        let object = FileStore.get(key).await.unwrap();
        Decoding::default()
            .read_whole(object, capacity, limit)
            .await
    }

    /// The whole object within the limit; exactly the limit's bytes of a longer one (the
    /// caller refuses it), whatever was reserved.
    #[tokio::test]
    async fn an_object_is_read_whole_up_to_its_limit() {
        assert_eq!(
            read_whole(COMPRESSED_64_A, 4096, 65).await.unwrap(),
            [b'a'; 64]
        );
        assert_eq!(
            read_whole(COMPRESSED_64_A, 0, 64).await.unwrap(),
            [b'a'; 64]
        );
        assert_eq!(
            read_whole(COMPRESSED_64_A, 16, 10).await.unwrap(),
            [b'a'; 10]
        );
    }

    /// Damage is an error naming the object, never a short buffer.
    #[tokio::test]
    async fn a_damaged_object_is_an_error_naming_it() {
        let err = read_whole(b"plain text", 64, 1024).await.unwrap_err();
        assert!(err.to_string().contains("object.lzo"), "{err}");
        let cut = &COMPRESSED_64_A[..COMPRESSED_64_A.len() - 10];
        let err = read_whole(cut, 64, 1024).await.unwrap_err();
        assert!(err.to_string().contains("object.lzo"), "{err}");
    }
}
