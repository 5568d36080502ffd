//! PostgreSQL's WAL names and arithmetic, the one place for both: file names as
//! `restore_command` receives them (`%f`: segments, timeline history files, backup
//! history labels, `.partial` segments), log sequence numbers, segment sizes, which
//! segment holds a position, and the page header that starts every segment. Pure code.

use std::fmt;

/// Whether `file_name` is one PostgreSQL restores into (`%p` of `restore_command`):
/// `RECOVERYXLOG` for segments, `RECOVERYHISTORY` for timeline history files. PostgreSQL
/// reads such a file at once; when it keeps it, it fsyncs it and renames it durably
/// itself (`KeepFileRestoredFromArchive`); after a crash it removes the name and asks
/// `restore_command` again. So the file needs an atomic rename but no fsync of ours.
pub fn is_restore_scratch_name(file_name: &str) -> bool {
    matches!(file_name, "RECOVERYXLOG" | "RECOVERYHISTORY")
}

/// PostgreSQL's default WAL segment size, assumed until a segment or `pg_control` says
/// otherwise.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// A position in WAL (`pg_lsn`), printed as PostgreSQL prints it: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `X/Y` (one to eight hex digits each, either case), as `pg_lsn` accepts.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.trim().split_once('/')?;
        let half = |s: &str| {
            (!s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
        };
        Some(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// One line of a timeline history file (`0000000N.history`): timeline `parent` ended at
/// `switch`, where its child began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSwitch {
    /// The ancestor timeline.
    pub parent: u32,
    /// Where it ended: the first position of its child.
    pub switch: Lsn,
}

/// Why a timeline history file cannot be followed: recovery would refuse it too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// A line that is not `timeline switchpoint [reason]`.
    #[error("line {line}: not `timeline switchpoint`: {text:?}")]
    Malformed {
        /// Its number, from 1.
        line: usize,
        /// The line.
        text: String,
    },
    /// Timelines out of order.
    #[error("line {line}: timelines must increase")]
    NotIncreasing {
        /// Its number, from 1.
        line: usize,
    },
}

/// Parses a history file as PostgreSQL's `readTimeLineHistory` does: `parentTLI
/// switchpoint [reason]` lines, comments and blank lines skipped, timelines increasing.
pub fn parse_history(text: &str) -> Result<Vec<TimelineSwitch>, HistoryError> {
    let mut entries: Vec<TimelineSwitch> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parent = fields.next().and_then(|f| f.parse::<u32>().ok());
        let switch = fields.next().and_then(Lsn::parse);
        let (Some(parent), Some(switch)) = (parent, switch) else {
            return Err(HistoryError::Malformed {
                line: number + 1,
                text: line.to_string(),
            });
        };
        if entries.last().is_some_and(|e| e.parent >= parent) {
            return Err(HistoryError::NotIncreasing { line: number + 1 });
        }
        entries.push(TimelineSwitch { parent, switch });
    }
    Ok(entries)
}

/// The timeline `lsn` was written on, on the way to `timeline` whose history is
/// `history` (as PostgreSQL's `tliOfPointInHistory`: a switch point belongs to the child).
pub fn timeline_at(lsn: Lsn, timeline: u32, history: &[TimelineSwitch]) -> u32 {
    history
        .iter()
        .find(|switch| lsn < switch.switch)
        .map_or(timeline, |switch| switch.parent)
}

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

impl SegmentName {
    /// A segment name from its three parts.
    pub fn new(timeline: u32, log: u32, seg: u32) -> SegmentName {
        SegmentName { timeline, log, seg }
    }

    /// Segments per "log" (the middle eight hex digits) for this segment size.
    fn per_log(size: u64) -> u64 {
        0x1_0000_0000 / size
    }

    /// The segment's number counted from the start of WAL (`XLogSegNo`).
    pub fn number(&self, size: u64) -> u64 {
        u64::from(self.log) * Self::per_log(size) + u64::from(self.seg)
    }

    /// The segment with number `number` on `timeline`.
    pub fn from_number(timeline: u32, number: u64, size: u64) -> SegmentName {
        let per_log = Self::per_log(size);
        SegmentName {
            timeline,
            log: (number / per_log) as u32,
            seg: (number % per_log) as u32,
        }
    }

    /// The segment holding the byte at `lsn` (`XLByteToSeg`).
    pub fn containing(timeline: u32, lsn: Lsn, size: u64) -> SegmentName {
        Self::from_number(timeline, lsn.0 / size, size)
    }

    /// The segment `pg_walfile_name()` names for `lsn`: a position exactly at a segment
    /// boundary is the end of the segment before it (`XLByteToPrevSeg`).
    pub fn ending_at(timeline: u32, lsn: Lsn, size: u64) -> SegmentName {
        Self::from_number(timeline, lsn.0.saturating_sub(1) / size, size)
    }

    /// The LSN where the segment starts.
    pub fn start_lsn(&self, size: u64) -> Lsn {
        Lsn(self.number(size) * size)
    }

    /// The segment after this one on the same timeline.
    pub fn next(&self, size: u64) -> SegmentName {
        Self::from_number(self.timeline, self.number(size) + 1, size)
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

/// The name of timeline `timeline`'s history file, `TTTTTTTT.history`, as PostgreSQL
/// archives it; [`WalFileKind::of`] reads it back. The one place such a name is written.
pub fn history_file_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

/// Whether `size` is a WAL segment size PostgreSQL allows: a power of two from 1 MiB to
/// 1 GiB (`--wal-segsize`).
pub fn is_valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)
}

/// The long page header that starts every WAL segment (`XLogLongPageHeaderData`,
/// little-endian): `xlp_magic` u16, `xlp_info` u16, `xlp_tli` u32, `xlp_pageaddr` u64,
/// `xlp_rem_len` u32 and padding to 24 bytes, then `xlp_sysid` u64, `xlp_seg_size` u32,
/// `xlp_xlog_blcksz` u32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    /// WAL page magic: one value per PostgreSQL major version.
    pub magic: u16,
    /// The timeline the page was written on.
    pub timeline: u32,
    /// The LSN of the page's first byte.
    pub page_address: Lsn,
    /// The database system identifier (as in `pg_control`).
    pub system_identifier: u64,
    /// The segment size the cluster was initialised with.
    pub segment_size: u32,
    /// The WAL block size.
    pub block_size: u32,
}

/// Bytes of a long page header.
pub const LONG_PAGE_HEADER_SIZE: usize = 40;

const XLP_LONG_HEADER: u16 = 0x0002;

/// Why the first bytes of a segment are not the long page header they should be: the
/// object is not WAL, or is another segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageHeaderError {
    /// Fewer bytes than a long page header.
    #[error("{0} bytes is too short for a WAL page header")]
    TooShort(usize),
    /// No WAL page magic of any PostgreSQL version.
    #[error("no WAL page magic (found {0:#06x})")]
    NoMagic(u16),
    /// A short page header where a segment's first page has a long one.
    #[error("the first page has no long header")]
    NotLong,
    /// Written on a later timeline than the name says.
    #[error("page header says timeline {found}, later than the name's {named}")]
    Timeline {
        /// The header's timeline.
        found: u32,
        /// The name's.
        named: u32,
    },
    /// Not the first page of the named segment.
    #[error("page header address {found:#x} is not the segment's start {expected:#x}")]
    Address {
        /// The header's page address.
        found: u64,
        /// The segment's start.
        expected: u64,
    },
}

/// WAL's magic range (one value per major version) and the long-header flag.
fn check_magic(magic: u16, info: u16) -> Result<(), PageHeaderError> {
    if magic >> 8 != 0xD0 && magic >> 8 != 0xD1 {
        return Err(PageHeaderError::NoMagic(magic));
    }
    if info & XLP_LONG_HEADER == 0 {
        return Err(PageHeaderError::NotLong);
    }
    Ok(())
}

impl LongPageHeader {
    /// Parses the first bytes of a segment; refuses anything without WAL's magic range
    /// and the long-header flag.
    pub fn parse(bytes: &[u8]) -> Result<LongPageHeader, PageHeaderError> {
        let Some(bytes) = bytes.get(..LONG_PAGE_HEADER_SIZE) else {
            return Err(PageHeaderError::TooShort(bytes.len()));
        };
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let magic = u16_at(0);
        check_magic(magic, u16_at(2))?;
        Ok(LongPageHeader {
            magic,
            timeline: u32_at(4),
            page_address: Lsn(u64_at(8)),
            system_identifier: u64_at(24),
            segment_size: u32_at(32),
            block_size: u32_at(36),
        })
    }
}

/// Checks that the first bytes of a file are the long page header of `segment`: WAL's
/// magic, the long-header flag, the name's timeline (or an ancestor's) and the segment's
/// own start address.
pub fn check_page_header(
    header: &[u8],
    segment: &SegmentName,
    size: u64,
) -> Result<(), PageHeaderError> {
    let magic = u16::from_le_bytes([header[0], header[1]]);
    let info = u16::from_le_bytes([header[2], header[3]]);
    let tli = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let pageaddr = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    check_magic(magic, info)?;
    // A timeline's first segment starts with its parent's pages when the switch came
    // mid-segment (PostgreSQL copies them over at promotion): an ancestor is fine.
    if tli > segment.timeline {
        return Err(PageHeaderError::Timeline {
            found: tli,
            named: segment.timeline,
        });
    }
    let expected = segment.start_lsn(size).0;
    if pageaddr != expected {
        return Err(PageHeaderError::Address {
            found: pageaddr,
            expected,
        });
    }
    Ok(())
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
    fn positions_map_to_the_timeline_that_wrote_them() {
        let history = parse_history("1\t0/60000A0\tno recovery target\n2\t0/9000000\n").unwrap();
        assert_eq!(timeline_at(Lsn(0x5FF_FFFF), 3, &history), 1);
        assert_eq!(timeline_at(Lsn(0x60000A0), 3, &history), 2);
        assert_eq!(timeline_at(Lsn(0x9000000), 3, &history), 3);
        assert_eq!(timeline_at(Lsn(1), 1, &[]), 1);
    }

    #[test]
    fn history_files_parse_as_postgres_reads_them() {
        let text = "1\t0/7000000\tno recovery target specified\n\n# comment\n2\t0/9A0B1C8\tat restore point \"x\"\n";
        assert_eq!(
            parse_history(text).unwrap(),
            [
                TimelineSwitch {
                    parent: 1,
                    switch: Lsn(0x700_0000)
                },
                TimelineSwitch {
                    parent: 2,
                    switch: Lsn(0x9A0_B1C8)
                }
            ]
        );
        assert!(parse_history("2\t0/1\n1\t0/2\n").is_err());
        assert!(parse_history("x y\n").is_err());
    }

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
        assert_eq!(history_file_name(2), "00000002.history");
        assert_eq!(
            WalFileKind::of(&history_file_name(0x1A)),
            WalFileKind::History(0x1A)
        );
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
    fn only_postgres_restore_names_are_scratch() {
        assert!(is_restore_scratch_name("RECOVERYXLOG"));
        assert!(is_restore_scratch_name("RECOVERYHISTORY"));
        for other in [
            "000000010000000000000003",
            "recoveryxlog",
            "RECOVERYXLOG.tmp",
            "",
        ] {
            assert!(!is_restore_scratch_name(other), "{other}");
        }
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

    fn seg(tli: u32, log: u32, seg: u32) -> SegmentName {
        SegmentName::new(tli, log, seg)
    }

    #[test]
    fn next_names_follow_the_segment_size() {
        assert_eq!(seg(1, 0, 0xFE).next(16 << 20), seg(1, 0, 0xFF));
        assert_eq!(seg(1, 0, 0xFF).next(16 << 20), seg(1, 1, 0));
        assert_eq!(seg(2, 3, 0x3F).next(64 << 20), seg(2, 4, 0));
        // 1 MiB segments go past 0xFF, which WAL-E asserted against.
        assert_eq!(seg(1, 0, 0xFF).next(1 << 20), seg(1, 0, 0x100));
        assert_eq!(
            seg(1, 1, 2).start_lsn(16 << 20),
            Lsn((0x100 + 2) * (16 << 20))
        );
    }

    #[test]
    fn positions_name_segments_as_postgres_does() {
        let size = 16 << 20;
        let lsn = Lsn::parse("0/C000000").unwrap();
        assert_eq!(lsn, Lsn(0xC00_0000));
        assert_eq!(lsn.to_string(), "0/C000000");
        assert_eq!(
            Lsn::parse("16/b374d848").unwrap().to_string(),
            "16/B374D848"
        );
        for bad in ["", "0", "/1", "1/", "123456789/0", "g/0", "0/0/0"] {
            assert_eq!(Lsn::parse(bad), None, "{bad}");
        }
        // A boundary belongs to the segment before it for pg_walfile_name.
        assert_eq!(SegmentName::ending_at(1, lsn, size), seg(1, 0, 0xB));
        assert_eq!(SegmentName::containing(1, lsn, size), seg(1, 0, 0xC));
        let inside = Lsn(0x1_0000_0000 + 5);
        assert_eq!(SegmentName::ending_at(3, inside, size), seg(3, 1, 0));
        assert_eq!(seg(1, 1, 0).number(size), 256);
        assert_eq!(SegmentName::from_number(1, 256, size), seg(1, 1, 0));
    }

    #[test]
    fn page_headers_are_checked_and_parsed() {
        let s = seg(1, 0, 3);
        let mut h = [0u8; LONG_PAGE_HEADER_SIZE];
        h[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        h[2..4].copy_from_slice(&2u16.to_le_bytes());
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..16].copy_from_slice(&(3u64 * (16 << 20)).to_le_bytes());
        h[24..32].copy_from_slice(&7_000_000_000_000_000_001u64.to_le_bytes());
        h[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        h[36..40].copy_from_slice(&8192u32.to_le_bytes());
        assert!(check_page_header(&h, &s, 16 << 20).is_ok());
        // A timeline's first segment may start with its parent's pages; never a child's.
        assert!(check_page_header(&h, &seg(2, 0, 3), 16 << 20).is_ok());
        let mut later = h;
        later[4..8].copy_from_slice(&3u32.to_le_bytes());
        assert!(check_page_header(&later, &seg(2, 0, 3), 16 << 20).is_err());
        assert!(check_page_header(&h, &seg(1, 0, 4), 16 << 20).is_err());
        assert!(check_page_header(&[0u8; 16], &s, 16 << 20).is_err());
        let long = LongPageHeader::parse(&h).unwrap();
        assert_eq!(long.system_identifier, 7_000_000_000_000_000_001);
        assert_eq!(long.segment_size, 16 << 20);
        assert_eq!(long.page_address, s.start_lsn(16 << 20));
        assert!(LongPageHeader::parse(&h[..20]).is_err());
        h[2] = 0;
        assert!(LongPageHeader::parse(&h).is_err());
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
