//! `global/pg_control`, read natively: which major version wrote it, the system
//! identifier, the WAL segment size, `wal_level` and the settings a hot standby must match.
//!
//! Only layouts wale knows are accepted: the pair (`pg_control_version`,
//! `catalog_version_no`) must be one of PostgreSQL 10–18's, and the CRC-32C over the
//! fixed part must match. Anything else is refused rather than guessed at. The layout is
//! chosen by that pair, never by where a CRC happens to match.

use std::fmt;

/// Where one major version keeps the fields wale reads (x86_64 offsets).
#[derive(Debug, Clone, Copy)]
struct Layout {
    major: u32,
    pg_control_version: u32,
    catalog_version: u32,
    wal_page_magic: u16,
    wal_level: usize,
    max_connections: usize,
    max_worker_processes: usize,
    /// In `pg_control` from PostgreSQL 12 on.
    max_wal_senders: Option<usize>,
    max_prepared_xacts: usize,
    max_locks_per_xact: usize,
    blcksz: usize,
    xlog_seg_size: usize,
    data_checksum_version: usize,
    /// Where the CRC-32C is stored; it covers every byte before it.
    crc: usize,
}

/// The layout of PostgreSQL 12 to 17 with that version's identifiers.
const fn modern(major: u32, version: u32, catalog: u32, magic: u16) -> Layout {
    Layout {
        major,
        pg_control_version: version,
        catalog_version: catalog,
        wal_page_magic: magic,
        wal_level: 172,
        max_connections: 180,
        max_worker_processes: 184,
        max_wal_senders: Some(188),
        max_prepared_xacts: 192,
        max_locks_per_xact: 196,
        blcksz: 216,
        xlog_seg_size: 228,
        data_checksum_version: 252,
        crc: 288,
    }
}

/// Every layout wale knows, identified by (`pg_control_version`, `catalog_version_no`).
/// PostgreSQL 10 keeps `prevCheckPoint` (so its fields sit where 12's do, with no
/// `max_wal_senders`); 11 drops it, 8 bytes earlier; 18 adds `default_char_signedness`
/// before the nonce, moving the CRC to 292.
const KNOWN_LAYOUTS: [Layout; 9] = [
    Layout {
        major: 10,
        pg_control_version: 1002,
        catalog_version: 201707211,
        wal_page_magic: 0xD097,
        wal_level: 172,
        max_connections: 180,
        max_worker_processes: 184,
        max_wal_senders: None,
        max_prepared_xacts: 188,
        max_locks_per_xact: 192,
        blcksz: 216,
        xlog_seg_size: 228,
        data_checksum_version: 252,
        crc: 288,
    },
    Layout {
        major: 11,
        pg_control_version: 1100,
        catalog_version: 201809051,
        wal_page_magic: 0xD098,
        wal_level: 164,
        max_connections: 172,
        max_worker_processes: 176,
        max_wal_senders: None,
        max_prepared_xacts: 180,
        max_locks_per_xact: 184,
        blcksz: 208,
        xlog_seg_size: 220,
        data_checksum_version: 244,
        crc: 280,
    },
    modern(12, 1201, 201909212, 0xD101),
    modern(13, 1300, 202007201, 0xD106),
    modern(14, 1300, 202107181, 0xD10D),
    modern(15, 1300, 202209061, 0xD110),
    modern(16, 1300, 202307071, 0xD113),
    modern(17, 1700, 202406281, 0xD116),
    Layout {
        crc: 292,
        ..modern(18, 1800, 202506291, 0xD118)
    },
];

/// The bytes every layout's fixed part fits in.
const LONGEST_FIXED_PART: usize = 296;

/// `wal_level` as `pg_control` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalLevel {
    /// `minimal`: not enough for archive recovery past the backup.
    Minimal,
    /// `replica`.
    Replica,
    /// `logical`.
    Logical,
}

impl fmt::Display for WalLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WalLevel::Minimal => "minimal",
            WalLevel::Replica => "replica",
            WalLevel::Logical => "logical",
        })
    }
}

/// The five settings a hot standby needs at least as high as the primary had them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotStandbySettings {
    /// `max_connections`.
    pub max_connections: i32,
    /// `max_worker_processes`.
    pub max_worker_processes: i32,
    /// `max_wal_senders` (PostgreSQL 12 on; before, the standby does not check it).
    pub max_wal_senders: Option<i32>,
    /// `max_prepared_transactions`.
    pub max_prepared_transactions: i32,
    /// `max_locks_per_transaction`.
    pub max_locks_per_transaction: i32,
}

impl HotStandbySettings {
    /// Each setting the standby checks, by its `postgresql.conf` name, in PostgreSQL's
    /// order of checking.
    pub fn named(&self) -> Vec<(&'static str, i32)> {
        let mut named = vec![("max_connections", self.max_connections)];
        named.push(("max_worker_processes", self.max_worker_processes));
        if let Some(senders) = self.max_wal_senders {
            named.push(("max_wal_senders", senders));
        }
        named.push(("max_prepared_transactions", self.max_prepared_transactions));
        named.push(("max_locks_per_transaction", self.max_locks_per_transaction));
        named
    }
}

/// What wale needs from `pg_control`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    /// The PostgreSQL major version whose layout matched.
    pub major_version: u32,
    /// The database system identifier, shared by every WAL page header of the cluster.
    pub system_identifier: u64,
    /// `catalog_version_no`.
    pub catalog_version: u32,
    /// The WAL page magic of this major version.
    pub wal_page_magic: u16,
    /// `wal_level` on the primary.
    pub wal_level: WalLevel,
    /// The primary's hot-standby settings.
    pub settings: HotStandbySettings,
    /// The WAL segment size (`xlog_seg_size`).
    pub segment_size: u32,
    /// The data block size (`blcksz`).
    pub block_size: u32,
    /// Whether data checksums are on.
    pub data_checksums: bool,
}

/// Why `pg_control` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the fixed part.
    #[error("{0} bytes is too short for pg_control")]
    TooShort(usize),
    /// A layout wale does not know.
    #[error(
        "pg_control_version {version} with catalog version {catalog} is not a PostgreSQL 10-18 layout wale knows"
    )]
    UnknownLayout {
        /// `pg_control_version`.
        version: u32,
        /// `catalog_version_no`.
        catalog: u32,
    },
    /// The checksum does not match.
    #[error("CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The stored value.
        stored: u32,
        /// The value of the bytes read.
        computed: u32,
    },
    /// A field out of range.
    #[error("{0}")]
    Invalid(String),
}

impl ControlData {
    /// Parses the file's bytes (the fixed part is all that is read).
    pub fn parse(bytes: &[u8]) -> Result<ControlData, Error> {
        if bytes.len() < LONGEST_FIXED_PART {
            return Err(Error::TooShort(bytes.len()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let i32_at = |o: usize| i32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let (version, catalog) = (u32_at(8), u32_at(12));
        let layout = KNOWN_LAYOUTS
            .iter()
            .find(|l| l.pg_control_version == version && l.catalog_version == catalog)
            .ok_or(Error::UnknownLayout { version, catalog })?;
        let stored = u32_at(layout.crc);
        let computed = crc32c(&bytes[..layout.crc]);
        if stored != computed {
            return Err(Error::Checksum { stored, computed });
        }
        let wal_level = match i32_at(layout.wal_level) {
            0 => WalLevel::Minimal,
            1 => WalLevel::Replica,
            2 => WalLevel::Logical,
            other => return Err(Error::Invalid(format!("unknown wal_level {other}"))),
        };
        let segment_size = u32_at(layout.xlog_seg_size);
        if !crate::wal::is_valid_segment_size(u64::from(segment_size)) {
            return Err(Error::Invalid(format!(
                "WAL segment size {segment_size} is not a power of two from 1 MiB to 1 GiB"
            )));
        }
        Ok(ControlData {
            major_version: layout.major,
            system_identifier: u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")),
            catalog_version: catalog,
            wal_page_magic: layout.wal_page_magic,
            wal_level,
            settings: HotStandbySettings {
                max_connections: i32_at(layout.max_connections),
                max_worker_processes: i32_at(layout.max_worker_processes),
                max_wal_senders: layout.max_wal_senders.map(i32_at),
                max_prepared_transactions: i32_at(layout.max_prepared_xacts),
                max_locks_per_transaction: i32_at(layout.max_locks_per_xact),
            },
            segment_size,
            block_size: u32_at(layout.blcksz),
            data_checksums: u32_at(layout.data_checksum_version) != 0,
        })
    }
}

/// CRC-32C (Castagnoli), as PostgreSQL computes it for `pg_control` and WAL records.
pub fn crc32c(bytes: &[u8]) -> u32 {
    const POLY: u32 = 0x82F6_3B78;
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8)
    })
}

/// `pg_control` of the data directory (read twice if a restartpoint was writing it).
pub async fn read(pgdata: &std::path::Path) -> Result<ControlData, crate::error::Error> {
    let path = pgdata.join("global/pg_control");
    let mut last = None;
    for _ in 0..2 {
        let bytes = std::fs::read(&path)
            .map_err(|e| crate::error::Error::local(&path, "cannot read", e))?;
        match ControlData::parse(&bytes) {
            Ok(control) => return Ok(control),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(crate::error::Error::Corrupt {
        url: path.display().to_string(),
        reason: last.map(|e| e.to_string()).unwrap_or_default(),
    })
}

/// A synthetic PostgreSQL 15 `pg_control` with the given `max_connections` and a valid
/// CRC, for tests.
#[cfg(test)]
pub(crate) fn synthetic(max_connections: i32) -> Vec<u8> {
    synthetic_of(15, max_connections)
}

/// A synthetic `pg_control` of major `major` (16 MiB segments, `replica`, checksums on).
#[cfg(test)]
pub(crate) fn synthetic_of(major: u32, max_connections: i32) -> Vec<u8> {
    let layout = KNOWN_LAYOUTS
        .iter()
        .find(|l| l.major == major)
        .expect("a known major");
    let mut b = vec![0u8; 8192];
    b[0..8].copy_from_slice(&7_300_000_000_000_000_042u64.to_le_bytes());
    b[8..12].copy_from_slice(&layout.pg_control_version.to_le_bytes());
    b[12..16].copy_from_slice(&layout.catalog_version.to_le_bytes());
    let mut put = |o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    put(layout.wal_level, 1);
    put(layout.max_connections, max_connections as u32);
    put(layout.max_worker_processes, 8);
    if let Some(o) = layout.max_wal_senders {
        put(o, 10);
    }
    put(layout.max_prepared_xacts, 0);
    put(layout.max_locks_per_xact, 64);
    put(layout.blcksz, 8192);
    put(layout.xlog_seg_size, 16 << 20);
    put(layout.data_checksum_version, 1);
    let crc = crc32c(&b[..layout.crc]);
    b[layout.crc..layout.crc + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn known_layouts_parse_and_everything_else_is_refused() {
        let bytes = synthetic(500);
        let control = ControlData::parse(&bytes).unwrap();
        assert_eq!(control.major_version, 15);
        assert_eq!(control.settings.max_connections, 500);
        assert_eq!(control.wal_level, WalLevel::Replica);
        assert_eq!(control.segment_size, 16 << 20);
        assert_eq!(control.wal_page_magic, 0xD110);
        assert!(control.data_checksums);

        let mut flipped = bytes.clone();
        flipped[180] ^= 1;
        assert!(matches!(
            ControlData::parse(&flipped),
            Err(Error::Checksum { .. })
        ));
        let mut unknown = bytes.clone();
        unknown[12..16].copy_from_slice(&202209062u32.to_le_bytes());
        assert_eq!(
            ControlData::parse(&unknown),
            Err(Error::UnknownLayout {
                version: 1300,
                catalog: 202209062
            })
        );
        assert_eq!(ControlData::parse(&bytes[..100]), Err(Error::TooShort(100)));
    }

    #[test]
    fn every_major_from_10_to_18_has_its_own_layout() {
        for major in 10..=18 {
            let control = ControlData::parse(&synthetic_of(major, 120)).unwrap();
            assert_eq!(control.major_version, major);
            assert_eq!(control.settings.max_connections, 120, "{major}");
            assert_eq!(control.settings.max_locks_per_transaction, 64, "{major}");
            assert_eq!(control.segment_size, 16 << 20, "{major}");
            assert_eq!(
                control.settings.max_wal_senders.is_some(),
                major >= 12,
                "{major}"
            );
            assert_eq!(
                control.settings.named().len(),
                if major >= 12 { 5 } else { 4 }
            );
        }
    }
}
