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

    /// An object decoded whole into memory (history files, backup labels, the segments
    /// the WAL stream sends), on a blocking thread: at most `limit` bytes of it (the
    /// caller judges an object that reaches the limit), `capacity` reserved up front.
    pub async fn read_whole(
        &self,
        object: ObjectReader,
        capacity: usize,
        limit: u64,
    ) -> Result<Vec<u8>, Error> {
        let decoding = self.clone();
        tokio::task::spawn_blocking(move || {
            let url = object.url.clone();
            let body = io::BufReader::with_capacity(BODY_BUFFER, object.into_blocking_read());
            let decoder = decoding
                .decoder(body, &url)
                .map_err(|e| Error::from_read(&url, e))?;
            let mut bytes = Vec::with_capacity(capacity);
            decoder
                .take(limit)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::from_read(&url, e))?;
            Ok(bytes)
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
