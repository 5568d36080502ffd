//! PostgreSQL WAL file names as `restore_command` receives them (`%f`): segments,
//! timeline history files, backup history labels and `.partial` segments. Pure code.

use std::fmt;

/// A 24-hex-digit WAL segment name: timeline, log and segment number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    /// Timeline ID.
    pub timeline: u32,
    /// High 32 bits of the segment number ("log").
    pub log: u32,
    /// Low part of the segment number.
    pub seg: u32,
}

impl SegmentName {
    /// Parses exactly 24 uppercase hex digits, as PostgreSQL writes them.
    pub fn parse(name: &str) -> Option<SegmentName> {
        // ASCII first: slicing a multi-byte character would panic (found by fuzzing).
        if name.len() != 24 || !name.is_ascii() {
            return None;
        }
        Some(SegmentName {
            timeline: parse_hex8(&name[0..8])?,
            log: parse_hex8(&name[8..16])?,
            seg: parse_hex8(&name[16..24])?,
        })
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

/// Eight uppercase hex digits (PostgreSQL never writes lowercase, and WAL-E rejects it).
pub fn parse_hex8(s: &str) -> Option<u32> {
    if s.len() != 8
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// What kind of file a WAL-archive name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileKind {
    /// A WAL segment, `TTTTTTTTLLLLLLLLSSSSSSSS`.
    Segment(SegmentName),
    /// A segment archived at promotion, `<segment>.partial`; full segment size.
    Partial(SegmentName),
    /// A timeline history file, `TTTTTTTT.history`.
    History(u32),
    /// A backup history label, `<segment>.XXXXXXXX.backup`.
    BackupLabel(SegmentName),
    /// Anything else; fetched verbatim like WAL-E does.
    Other,
}

impl WalFileKind {
    /// Classifies a `%f` name.
    pub fn of(name: &str) -> WalFileKind {
        if let Some(seg) = SegmentName::parse(name) {
            return WalFileKind::Segment(seg);
        }
        if let Some(seg) = name.strip_suffix(".partial").and_then(SegmentName::parse) {
            return WalFileKind::Partial(seg);
        }
        if let Some(tli) = name.strip_suffix(".history").and_then(parse_hex8) {
            return WalFileKind::History(tli);
        }
        if let Some(rest) = name.strip_suffix(".backup")
            && rest.len() == 33
            && rest.as_bytes()[24] == b'.'
            && parse_hex8(&rest[25..]).is_some()
            && let Some(seg) = SegmentName::parse(&rest[..24])
        {
            return WalFileKind::BackupLabel(seg);
        }
        WalFileKind::Other
    }

    /// Whether the file must be exactly one WAL segment long.
    pub fn is_full_segment(self) -> bool {
        matches!(self, WalFileKind::Segment(_) | WalFileKind::Partial(_))
    }
}

/// Whether `size` is a WAL segment size PostgreSQL allows: a power of two from 1 MiB to
/// 1 GiB (`--wal-segsize`).
pub fn is_valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)
}

/// Checks that a `%f` name is one plain path component, so it cannot address anything
/// outside `wal_005/`.
pub fn check_archive_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the WAL file name is empty");
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err("the WAL file name must be a plain file name such as 000000010000000000000003");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let seg = SegmentName {
            timeline: 1,
            log: 0,
            seg: 3,
        };
        assert_eq!(
            WalFileKind::of("000000010000000000000003"),
            WalFileKind::Segment(seg)
        );
        assert_eq!(
            WalFileKind::of("000000010000000000000003.partial"),
            WalFileKind::Partial(seg)
        );
        assert_eq!(WalFileKind::of("00000002.history"), WalFileKind::History(2));
        assert_eq!(
            WalFileKind::of("000000010000000000000003.00000028.backup"),
            WalFileKind::BackupLabel(seg)
        );
        for other in [
            "00000001000000000000000a",
            "RECOVERYXLOG",
            "0000000100000000000003",
            "x.history",
        ] {
            assert_eq!(WalFileKind::of(other), WalFileKind::Other, "{other}");
        }
        assert_eq!(seg.to_string(), "000000010000000000000003");
    }

    #[test]
    fn non_ascii_names_are_refused_not_panicked_on() {
        // Regression: the fuzzer's input, a 24-byte name with multi-byte characters.
        let fuzzed = "0 00000\u{fffd}\u{fffd}.hist\u{fffd}ory";
        assert_eq!(fuzzed.len(), 24);
        assert_eq!(SegmentName::parse(fuzzed), None);
        assert_eq!(WalFileKind::of(fuzzed), WalFileKind::Other);
        assert_eq!(
            WalFileKind::of("ééééééééééééééééééééééé.backup"),
            WalFileKind::Other
        );
    }

    #[test]
    fn segment_sizes_and_names() {
        assert!(is_valid_segment_size(16 << 20));
        assert!(is_valid_segment_size(1 << 20));
        assert!(!is_valid_segment_size((16 << 20) - 1));
        assert!(!is_valid_segment_size(0));
        assert!(!is_valid_segment_size(2 << 30));
        assert!(check_archive_name("000000010000000000000003").is_ok());
        for bad in ["", ".", "..", "../x", "a/b"] {
            assert!(check_archive_name(bad).is_err(), "{bad}");
        }
    }
}
