//! A streaming tar reader for WAL-E's partitions: ustar, GNU (`././@LongLink` names and
//! link names, base-256 numbers) and pax (`x` per-member and `g` global records, which
//! Python ≥ 3.8 puts before every member to carry a fractional mtime).
//!
//! It parses headers only and hands out each member's data as a bounded reader; it never
//! touches the file system (that is [`crate::extract`]). Every header checksum is verified,
//! every size is bounded, and anything unexpected is an error, never a panic.

use std::io::{self, Read};

/// The block size of the tar format.
const BLOCK: usize = 512;
/// Longest GNU long name or pax header data accepted, to bound memory.
const MAX_META_BYTES: u64 = 1 << 20;
/// Largest member accepted (4 EiB): keeps every size computation far from overflow.
const MAX_MEMBER_BYTES: u64 = 1 << 62;
/// Owner and group names are 32 bytes in ustar; longer pax values are cut to that.
const MAX_NAME_BYTES: usize = 32;

/// What is wrong with a tar stream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The underlying reader failed.
    #[error("read failed: {0}")]
    Read(#[source] io::Error),
    /// The stream ended inside a header or a member's data.
    #[error("truncated tar stream: ended inside {0}")]
    Truncated(&'static str),
    /// A header is malformed.
    #[error("corrupt tar header{}: {reason}", member.as_ref().map(|m| format!(" after {m:?}")).unwrap_or_default())]
    Corrupt {
        /// The last member read successfully, to locate the damage.
        member: Option<String>,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// The underlying read error, when this is one (the source may be retried).
    pub fn into_read_error(self) -> Result<io::Error, Error> {
        match self {
            Error::Read(err) => Ok(err),
            other => Err(other),
        }
    }
}

/// The kinds of members WAL-E archives hold (and the ones it cannot, named for errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (types `0`, `\0`, `7`).
    File,
    /// A directory (`5`).
    Directory,
    /// A symbolic link (`2`).
    Symlink,
    /// A hard link to an earlier member (`1`).
    HardLink,
    /// A device, FIFO or other special file, by its type byte.
    Special(u8),
}

/// One member's header, with pax and GNU extensions applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// The member name as stored (directories may end in `/`; the root is `/`).
    pub path: Vec<u8>,
    /// What the member is.
    pub kind: Kind,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
    /// Owner name, possibly empty.
    pub uname: String,
    /// Group name, possibly empty.
    pub gname: String,
    /// Modification time: seconds since the epoch and nanoseconds.
    pub mtime: (i64, u32),
    /// Data bytes that follow (0 for anything but files).
    pub size: u64,
    /// Link target for symlinks and hard links.
    pub link: Option<Vec<u8>>,
}

impl Header {
    /// The member name for messages.
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// Overrides from pax records or GNU long-name members for the next header.
#[derive(Debug, Default, Clone)]
struct Overrides {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<(i64, u32)>,
    uid: Option<u64>,
    gid: Option<u64>,
    uname: Option<String>,
    gname: Option<String>,
}

impl Overrides {
    /// Later global records replace earlier ones key by key.
    fn merge_over(self, earlier: &mut Overrides) {
        earlier.mtime = self.mtime.or(earlier.mtime);
        earlier.uid = self.uid.or(earlier.uid);
        earlier.gid = self.gid.or(earlier.gid);
        earlier.uname = self.uname.or(earlier.uname.take());
        earlier.gname = self.gname.or(earlier.gname.take());
    }

    fn merge_into(&self, h: &mut Header) {
        if let Some(p) = &self.path {
            h.path = p.clone();
        }
        if let Some(l) = &self.link {
            h.link = Some(l.clone());
        }
        if let Some(s) = self.size {
            h.size = s;
        }
        if let Some(m) = self.mtime {
            h.mtime = m;
        }
        if let Some(u) = self.uid {
            h.uid = u;
        }
        if let Some(g) = self.gid {
            h.gid = g;
        }
        if let Some(u) = &self.uname {
            h.uname = u.clone();
        }
        if let Some(g) = &self.gname {
            h.gname = g.clone();
        }
    }
}

/// Reads members from a tar stream in order.
pub struct Archive<R> {
    src: R,
    /// Data bytes of the current member not yet read.
    remaining: u64,
    /// Padding after the current member's data.
    padding: u64,
    global: Overrides,
    last_member: Option<String>,
    finished: bool,
}

impl<R: Read> Archive<R> {
    /// After the end-of-archive marker: reads what follows it (the writer's padding) to
    /// the end of the stream, so that the layers below check what only the end reveals
    /// (lzop's last checksums and end marker, an OpenPGP integrity code).
    pub fn read_to_end_of_stream(&mut self) -> Result<u64, Error> {
        io::copy(&mut self.src, &mut io::sink()).map_err(Error::Read)
    }

    /// Wraps a reader positioned at the start of a tar stream.
    pub fn new(src: R) -> Self {
        Archive {
            src,
            remaining: 0,
            padding: 0,
            global: Overrides::default(),
            last_member: None,
            finished: false,
        }
    }

    /// The next member's header, or `None` at the end-of-archive marker. Any data of the
    /// previous member that was not read is skipped.
    pub fn next_header(&mut self) -> Result<Option<Header>, Error> {
        if self.finished {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut local = Overrides::default();
        // Extension members (pax `x`, GNU `L`, `K`) waiting for the member they describe.
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? {
                return Err(Error::Truncated("the end-of-archive marker"));
            }
            if block.iter().all(|&b| b == 0) {
                if !pending.is_empty() {
                    return Err(self.corrupt(format!(
                        "an extension header ({}) at the end of the archive describes no member",
                        describe_types(&pending)
                    )));
                }
                // One zero block marks the end; WAL-E's writer adds a second and padding,
                // which are left unread like WAL-E does.
                self.finished = true;
                return Ok(None);
            }
            let raw = self.parse_block(&block)?;
            let type_flag = block[156];
            if matches!(type_flag, b'x' | b'L' | b'K') {
                if pending.contains(&type_flag) {
                    return Err(self.corrupt(format!(
                        "two extension headers of type {:?} for one member",
                        type_flag as char
                    )));
                }
                pending.push(type_flag);
            }
            match type_flag {
                b'x' => {
                    let data = self.read_meta(raw.size, "a pax header")?;
                    parse_pax(&data, &mut local).map_err(|e| self.corrupt(e.to_string()))?;
                }
                b'g' => {
                    // As tar-rs and GNU tar: a global record never renames, relinks or
                    // resizes every later member; only attributes carry over.
                    let data = self.read_meta(raw.size, "a pax header")?;
                    let mut global = Overrides::default();
                    parse_pax(&data, &mut global).map_err(|e| self.corrupt(e.to_string()))?;
                    global.path = None;
                    global.link = None;
                    global.size = None;
                    global.merge_over(&mut self.global);
                }
                b'L' | b'K' => {
                    let mut data = self.read_meta(raw.size, "a GNU long name")?;
                    if let Some(nul) = data.iter().position(|&b| b == 0) {
                        data.truncate(nul);
                    }
                    if type_flag == b'L' {
                        local.path = Some(data);
                    } else {
                        local.link = Some(data);
                    }
                }
                _ => return self.member(raw, &local).map(Some),
            }
        }
    }

    /// A member's own header with the extension records applied, its size checked, and
    /// the reader set to its data.
    fn member(&mut self, raw: Header, local: &Overrides) -> Result<Header, Error> {
        let mut header = raw;
        self.global.merge_into(&mut header);
        local.merge_into(&mut header);
        if header.kind != Kind::File {
            // Only regular files carry data (hard links and the rest have size 0
            // in every writer WAL-E used); never trust a size on anything else.
            if header.size != 0 && header.kind != Kind::HardLink {
                return Err(self.corrupt(format!(
                    "{:?} is not a regular file but claims {} data bytes",
                    header.display_path(),
                    header.size
                )));
            }
            header.size = 0;
        }
        if header.size > MAX_MEMBER_BYTES {
            return Err(self.corrupt(format!(
                "{:?} claims {} bytes",
                header.display_path(),
                header.size
            )));
        }
        self.remaining = header.size;
        self.padding = padding_of(header.size);
        self.last_member = Some(header.display_path());
        Ok(header)
    }

    /// Gives back the underlying reader (positioned after the end-of-archive block).
    pub fn into_inner(self) -> R {
        self.src
    }

    /// Reads the current member's data (at most what its header announced).
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let got = loop {
            match self.src.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Read(e)),
            }
        };
        if got == 0 {
            return Err(Error::Truncated("a member's data"));
        }
        self.remaining -= got as u64;
        Ok(got)
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            member: self.last_member.clone(),
            reason,
        }
    }

    fn skip_rest(&mut self) -> Result<(), Error> {
        let mut scratch = [0u8; 8192];
        let mut left = self.remaining + self.padding;
        while left > 0 {
            let chunk = left.min(scratch.len() as u64) as usize;
            if !read_exact_or_eof(&mut self.src, &mut scratch[..chunk])? {
                return Err(Error::Truncated("a member's data"));
            }
            left -= chunk as u64;
        }
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }

    /// Reads one block; false on a clean end of stream before it.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, Error> {
        let mut filled = 0;
        while filled < BLOCK {
            match self.src.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(Error::Truncated("a header")),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Read(e)),
            }
        }
        Ok(true)
    }

    /// The data of a pax or GNU metadata member, bounded in size.
    fn read_meta(&mut self, size: u64, what: &'static str) -> Result<Vec<u8>, Error> {
        if size > MAX_META_BYTES {
            return Err(self.corrupt(format!("{what} of {size} bytes")));
        }
        let mut data = vec![0u8; size as usize];
        if !read_exact_or_eof(&mut self.src, &mut data)? {
            return Err(Error::Truncated(what));
        }
        let mut pad = vec![0u8; padding_of(size) as usize];
        if !read_exact_or_eof(&mut self.src, &mut pad)? {
            return Err(Error::Truncated(what));
        }
        Ok(data)
    }

    fn parse_block(&self, block: &[u8; BLOCK]) -> Result<Header, Error> {
        verify_checksum(block).map_err(|e| self.corrupt(e.to_string()))?;
        let field = |range: std::ops::Range<usize>, name: &'static str| {
            parse_number(&block[range])
                .map_err(|why| self.corrupt(format!("bad {name} field: {why}")))
        };
        let is_posix = &block[257..263] == b"ustar\0";
        let mut path = cstr(&block[0..100]).to_vec();
        if is_posix {
            let prefix = cstr(&block[345..500]);
            if !prefix.is_empty() {
                let mut full = prefix.to_vec();
                full.push(b'/');
                full.extend_from_slice(&path);
                path = full;
            }
        }
        let kind = match block[156] {
            b'0' | 0 | b'7' => Kind::File,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'5' => Kind::Directory,
            b'x' | b'g' | b'L' | b'K' => Kind::File, // metadata members: only size matters
            other => Kind::Special(other),
        };
        let link = cstr(&block[157..257]);
        Ok(Header {
            path,
            kind,
            mode: (field(100..108, "mode")? & 0o7777) as u32,
            uid: field(108..116, "uid")?,
            gid: field(116..124, "gid")?,
            size: field(124..136, "size")?,
            mtime: (field(136..148, "mtime")? as i64, 0),
            link: (!link.is_empty()).then(|| link.to_vec()),
            uname: String::from_utf8_lossy(cstr(&block[265..297])).into_owned(),
            gname: String::from_utf8_lossy(cstr(&block[297..329])).into_owned(),
        })
    }
}

fn padding_of(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Fills `buf`; false if the stream ended first.
fn read_exact_or_eof<R: Read>(src: &mut R, buf: &mut [u8]) -> Result<bool, Error> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Read(e)),
        }
    }
    Ok(true)
}

/// The bytes before the first NUL.
fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Why a header number field cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// A negative GNU base-256 number.
    #[error("negative base-256 number")]
    Negative,
    /// A base-256 number beyond 64 bits.
    #[error("base-256 number too large")]
    Base256TooLarge,
    /// Not octal digits (the field as found).
    #[error("{0:?} is not octal")]
    NotOctal(String),
    /// An octal number beyond 64 bits.
    #[error("octal number too large")]
    OctalTooLarge,
}

/// Why a header block is not a tar header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    /// The checksum field is not a number.
    #[error("bad checksum field: {0}")]
    Field(NumberError),
    /// The checksum does not match the block.
    #[error("header checksum mismatch (stored {stored}, computed {computed})")]
    Mismatch {
        /// The checksum the header holds.
        stored: u64,
        /// The block's own sum.
        computed: u64,
    },
}

/// Why pax extended-header records cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaxError {
    /// No space after the length.
    #[error("pax record without a length")]
    NoLength,
    /// The length is not a number.
    #[error("pax record with a bad length")]
    BadLength,
    /// The length disagrees with the record.
    #[error("pax record length does not match its contents")]
    LengthMismatch,
    /// No `key=value`.
    #[error("pax record without '='")]
    NoEquals,
    /// A numeric key whose value is not a number.
    #[error("pax {key} {value:?} is not a number")]
    NotANumber {
        /// `size`, `uid` or `gid`.
        key: &'static str,
        /// The value as found.
        value: String,
    },
    /// An `mtime` that is not a non-negative time.
    #[error("pax mtime {0:?} is not a time")]
    BadTime(String),
}

/// Octal (space/NUL padded) or GNU base-256 (high bit set) numbers.
fn parse_number(field: &[u8]) -> Result<u64, NumberError> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return Err(NumberError::Negative);
        }
        let mut value: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            value = value
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or(NumberError::Base256TooLarge)?;
        }
        return Ok(value);
    }
    let text = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ');
    let mut value: u64 = 0;
    for b in text {
        if !(b'0'..=b'7').contains(&b) {
            return Err(NumberError::NotOctal(
                String::from_utf8_lossy(field).into_owned(),
            ));
        }
        value = value
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(NumberError::OctalTooLarge)?;
    }
    Ok(value)
}

/// The header checksum: the byte sum with the checksum field read as spaces (unsigned,
/// or signed as some old writers computed it).
fn verify_checksum(block: &[u8; BLOCK]) -> Result<(), ChecksumError> {
    let stored = parse_number(&block[148..156]).map_err(ChecksumError::Field)?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || stored as i64 == signed {
        Ok(())
    } else {
        Err(ChecksumError::Mismatch {
            stored,
            computed: unsigned,
        })
    }
}

/// Names extension member types for a message: `x`, `L`, `K`.
fn describe_types(types: &[u8]) -> String {
    types
        .iter()
        .map(|&t| format!("{:?}", t as char))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses pax records (`<len> <key>=<value>\n`) into overrides.
fn parse_pax(mut data: &[u8], out: &mut Overrides) -> Result<(), PaxError> {
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or(PaxError::NoLength)?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(PaxError::BadLength)?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(PaxError::LengthMismatch);
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or(PaxError::NoEquals)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let text = || String::from_utf8_lossy(value).into_owned();
        let number = |key: &'static str| -> Result<u64, PaxError> {
            text()
                .parse()
                .map_err(|_| PaxError::NotANumber { key, value: text() })
        };
        match key {
            b"path" => out.path = Some(value.to_vec()),
            b"linkpath" => out.link = Some(value.to_vec()),
            b"size" => out.size = Some(number("size")?),
            b"uid" => out.uid = Some(number("uid")?),
            b"gid" => out.gid = Some(number("gid")?),
            b"uname" => out.uname = Some(short_name(value)),
            b"gname" => out.gname = Some(short_name(value)),
            b"mtime" => out.mtime = Some(parse_pax_time(&text())?),
            _ => {}
        }
        data = &data[len..];
    }
    Ok(())
}

/// An owner or group name, cut to the ustar field's length.
fn short_name(value: &[u8]) -> String {
    String::from_utf8_lossy(&value[..value.len().min(MAX_NAME_BYTES)]).into_owned()
}

/// `1795561130.5374777` → (seconds, nanoseconds); negative times are refused.
fn parse_pax_time(text: &str) -> Result<(i64, u32), PaxError> {
    let bad = || PaxError::BadTime(text.to_string());
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    if secs < 0 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    Ok((secs, digits.parse().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests;
