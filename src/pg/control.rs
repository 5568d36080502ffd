//! `global/pg_control`, read natively: which major version wrote it, the system
//! identifier, the WAL segment size, `wal_level` and the settings a hot standby must match.
//!
//! Only layouts wale knows are accepted: the pair (`pg_control_version`,
//! `catalog_version_no`) must be one of PostgreSQL 12–17's, and the CRC-32C over the
//! fixed part must match. Anything else is refused rather than guessed at.

use std::fmt;

/// Where the CRC-32C is stored; it covers every byte before it (PostgreSQL 12–17).
const CRC_OFFSET: usize = 288;

/// (major version, `pg_control_version`, `catalog_version_no`, WAL page magic).
const KNOWN_LAYOUTS: [(u32, u32, u32, u16); 6] = [
    (12, 1201, 201909212, 0xD101),
    (13, 1300, 202007201, 0xD106),
    (14, 1300, 202107181, 0xD10D),
    (15, 1300, 202209061, 0xD110),
    (16, 1300, 202307071, 0xD113),
    (17, 1700, 202406281, 0xD116),
];

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
    /// `max_wal_senders`.
    pub max_wal_senders: i32,
    /// `max_prepared_transactions`.
    pub max_prepared_transactions: i32,
    /// `max_locks_per_transaction`.
    pub max_locks_per_transaction: i32,
}

impl HotStandbySettings {
    /// Each setting by its `postgresql.conf` name, in PostgreSQL's order of checking.
    pub fn named(&self) -> [(&'static str, i32); 5] {
        [
            ("max_connections", self.max_connections),
            ("max_worker_processes", self.max_worker_processes),
            ("max_wal_senders", self.max_wal_senders),
            ("max_prepared_transactions", self.max_prepared_transactions),
            ("max_locks_per_transaction", self.max_locks_per_transaction),
        ]
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
        "pg_control_version {version} with catalog version {catalog} is not a PostgreSQL 12-17 layout wale knows"
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
        if bytes.len() < CRC_OFFSET + 4 {
            return Err(Error::TooShort(bytes.len()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let i32_at = |o: usize| i32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let (version, catalog) = (u32_at(8), u32_at(12));
        let &(major_version, _, _, wal_page_magic) = KNOWN_LAYOUTS
            .iter()
            .find(|&&(_, v, c, _)| v == version && c == catalog)
            .ok_or(Error::UnknownLayout { version, catalog })?;
        let stored = u32_at(CRC_OFFSET);
        let computed = crc32c(&bytes[..CRC_OFFSET]);
        if stored != computed {
            return Err(Error::Checksum { stored, computed });
        }
        let wal_level = match i32_at(172) {
            0 => WalLevel::Minimal,
            1 => WalLevel::Replica,
            2 => WalLevel::Logical,
            other => return Err(Error::Invalid(format!("unknown wal_level {other}"))),
        };
        let segment_size = u32_at(228);
        if !crate::wal::is_valid_segment_size(u64::from(segment_size)) {
            return Err(Error::Invalid(format!(
                "WAL segment size {segment_size} is not a power of two from 1 MiB to 1 GiB"
            )));
        }
        Ok(ControlData {
            major_version,
            system_identifier: u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")),
            catalog_version: catalog,
            wal_page_magic,
            wal_level,
            settings: HotStandbySettings {
                max_connections: i32_at(180),
                max_worker_processes: i32_at(184),
                max_wal_senders: i32_at(188),
                max_prepared_transactions: i32_at(192),
                max_locks_per_transaction: i32_at(196),
            },
            segment_size,
            block_size: u32_at(216),
            data_checksums: u32_at(252) != 0,
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

/// A synthetic PostgreSQL 15 `pg_control` with the given `max_connections` and a valid
/// CRC, for tests.
#[cfg(test)]
pub(crate) fn synthetic(max_connections: i32) -> Vec<u8> {
    let mut b = vec![0u8; 8192];
    b[0..8].copy_from_slice(&7_300_000_000_000_000_042u64.to_le_bytes());
    b[8..12].copy_from_slice(&1300u32.to_le_bytes());
    b[12..16].copy_from_slice(&202209061u32.to_le_bytes());
    b[172..176].copy_from_slice(&1i32.to_le_bytes());
    for (o, v) in [
        (180, max_connections),
        (184, 8),
        (188, 10),
        (192, 0),
        (196, 64),
    ] {
        b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
    b[216..220].copy_from_slice(&8192u32.to_le_bytes());
    b[228..232].copy_from_slice(&(16u32 << 20).to_le_bytes());
    b[252..256].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32c(&b[..CRC_OFFSET]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
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
}
