//! WAL-E's key grammar under a prefix (as WAL-E 1.1 writes it): where WAL
//! files, base backups and their sentinels live, and how backup names are spelled. Pure.

/// The storage format version WAL-E 0.5+ writes; older ones cannot be restored.
const VERSION: &str = "005";

/// The archive's keys, derived from its path prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    path_prefix: String,
}

impl Layout {
    /// `path_prefix` is empty or ends with `/` (see [`crate::config::StoreConfig::path_prefix`]).
    pub fn new(path_prefix: &str) -> Layout {
        Layout {
            path_prefix: path_prefix.to_string(),
        }
    }

    /// `<prefix>basebackups_005/`.
    pub fn basebackups(&self) -> String {
        format!("{}basebackups_{VERSION}/", self.path_prefix)
    }

    /// `<prefix>wal_005/<name>.lzo`, for any `%f` name, used verbatim as WAL-E does.
    pub fn wal_key(&self, name: &str) -> String {
        format!("{}wal_{VERSION}/{name}.lzo", self.path_prefix)
    }

    /// `<prefix>basebackups_005/<backup>/tar_partitions/`.
    pub fn tar_partitions(&self, backup: &BackupName) -> String {
        format!("{}{}/tar_partitions/", self.basebackups(), backup.as_str())
    }

    /// `<prefix>basebackups_005/<backup>/extended_version.txt`: the source server's
    /// `select version()`, which names its major version.
    pub fn extended_version_key(&self, backup: &BackupName) -> String {
        format!(
            "{}{}/extended_version.txt",
            self.basebackups(),
            backup.as_str()
        )
    }

    /// `<prefix>wal_005/`.
    pub fn wal_dir(&self) -> String {
        format!("{}wal_{VERSION}/", self.path_prefix)
    }

    /// The sentinel object whose existence marks `backup` complete.
    pub fn sentinel_key(&self, backup: &BackupName) -> String {
        format!("{}{}{SENTINEL_SUFFIX}", self.basebackups(), backup.as_str())
    }
}

const SENTINEL_SUFFIX: &str = "_backup_stop_sentinel.json";

/// The number of a partition object, `part_<digits>.tar.lzo` (padded since WAL-E 0.7,
/// unpadded before).
pub fn partition_number(file_name: &str) -> Option<u64> {
    let digits = file_name.strip_prefix("part_")?.strip_suffix(".tar.lzo")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A base backup name, `base_<24 hex>_<8 chars>`. The segment is the WAL file holding the
/// backup's start; the offset is a zero-padded *decimal* byte offset that WAL-E's regex
/// also lets be `[0-9A-F]`, so it is kept as an opaque string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupName(String);

impl BackupName {
    /// Parses a whole name.
    pub fn parse(name: &str) -> Option<BackupName> {
        let rest = name.strip_prefix("base_")?;
        let bytes = rest.as_bytes();
        let ok = bytes.len() == 33
            && bytes[24] == b'_'
            && crate::wal::SegmentName::parse(&rest[..24]).is_some()
            && bytes[25..]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
        ok.then(|| BackupName(name.to_string()))
    }

    /// Parses the file name of a sentinel (`base_…_backup_stop_sentinel.json`).
    pub fn from_sentinel_file_name(file_name: &str) -> Option<BackupName> {
        BackupName::parse(file_name.strip_suffix(SENTINEL_SUFFIX)?)
    }

    /// The name as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The WAL segment holding the backup's start (`wal_segment_backup_start`).
    pub fn start_segment(&self) -> &str {
        &self.0[5..29]
    }

    /// The start offset as written (`wal_segment_offset_backup_start`).
    pub fn start_offset(&self) -> &str {
        &self.0[30..38]
    }
}

impl std::fmt::Display for BackupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let l = Layout::new("small/");
        assert_eq!(
            l.wal_key("00000002.history"),
            "small/wal_005/00000002.history.lzo"
        );
        assert_eq!(l.basebackups(), "small/basebackups_005/");
        let b = BackupName::parse("base_000000010000000000000003_00000040").unwrap();
        assert_eq!(
            l.sentinel_key(&b),
            "small/basebackups_005/base_000000010000000000000003_00000040_backup_stop_sentinel.json"
        );
        assert_eq!(Layout::new("").wal_key("x"), "wal_005/x.lzo");
    }

    #[test]
    fn partitions() {
        assert_eq!(partition_number("part_00000000.tar.lzo"), Some(0));
        assert_eq!(partition_number("part_10.tar.lzo"), Some(10));
        for bad in ["part_.tar.lzo", "part_1.tar", "part_x.tar.lzo", "other"] {
            assert_eq!(partition_number(bad), None, "{bad}");
        }
        let b = BackupName::parse("base_000000010000000000000003_00000040").unwrap();
        assert_eq!(
            Layout::new("p/").tar_partitions(&b),
            "p/basebackups_005/base_000000010000000000000003_00000040/tar_partitions/"
        );
    }

    #[test]
    fn backup_names() {
        let b = BackupName::from_sentinel_file_name(
            "base_000000010000000000000003_00000040_backup_stop_sentinel.json",
        )
        .unwrap();
        assert_eq!(b.start_segment(), "000000010000000000000003");
        assert_eq!(b.start_offset(), "00000040");
        for bad in [
            "base_000000010000000000000003_0000004",
            "base_000000010000000000000003_0000004g",
            "base_00000001000000000000000x_00000040",
            "base_000000010000000000000003_00000040x",
            "LATEST",
        ] {
            assert!(BackupName::parse(bad).is_none(), "{bad}");
        }
        assert!(
            BackupName::from_sentinel_file_name(
                "base_000000010000000000000003_00000040_backup_stop_sentinel.jsonx"
            )
            .is_none()
        );
    }
}
