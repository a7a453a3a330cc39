//! Every constant of the on-disk format, in one place.
//!
//! A topic directory holds segment files named by their base offset, zero-padded to 20
//! digits (`00000000000000000000.seg`). Each file starts with a [`SEGMENT_HEADER_LEN`]-byte
//! header and is followed by records (see [`crate::wal::record`]). The space after the
//! last record is zero: a record header of all zero bytes marks the end of data.
//!
//! A segment file is not created at its full capacity: it starts at
//! [`SEGMENT_FIRST_ALLOCATION`] bytes and is grown (allocated with `posix_fallocate`)
//! ahead of the writer, so the file's length is its allocated size, which is any multiple
//! of [`SEGMENT_ALLOCATION_UNIT`] up to the capacity. Files written by older builds, fully
//! allocated at creation, are simply segments that are fully grown.

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FRAMECST";
/// Version of the segment and record layout written by this build.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes taken by the segment file header.
///
/// | bytes  | field        | notes                                   |
/// |--------|--------------|-----------------------------------------|
/// | 0..8   | magic        | [`SEGMENT_MAGIC`]                       |
/// | 8..12  | version      | [`FORMAT_VERSION`], little-endian u32   |
/// | 12..16 | header_len   | [`SEGMENT_HEADER_LEN`]                  |
/// | 16..24 | base_offset  | offset of the first record              |
/// | 24..60 | reserved     | zero                                    |
/// | 60..64 | header_crc   | CRC32 of bytes 0..60                    |
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Where the header CRC sits inside the segment header.
pub const SEGMENT_HEADER_CRC_AT: usize = 60;
/// Suffix of segment files.
pub const SEGMENT_SUFFIX: &str = "seg";
/// Width of the zero-padded base offset in a segment file name.
pub const SEGMENT_NAME_DIGITS: usize = 20;
/// Suffix given to a copy of the bytes cut from a torn tail, kept for inspection.
pub const TORN_SUFFIX: &str = "torn";

/// Bytes taken by a record header.
pub const RECORD_HEADER_LEN: usize = 40;
/// Bytes of the stored-at time that precedes a non-empty idempotency key.
pub const KEY_TIME_LEN: usize = 8;
/// The longest idempotency key a record can carry.
pub const MAX_KEY_LEN: usize = 128;
/// Where the record CRC sits; it covers everything after it (`CRC_START..length`).
pub const RECORD_CRC_AT: usize = 4;
/// First byte covered by the record CRC.
pub const RECORD_CRC_START: usize = 8;

/// Default segment capacity: a segment file grows up to this many bytes, then the next
/// one is started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest allowed segment size: a header and one small record must fit.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Bytes a new segment file is first allocated with: a small topic (a chat room with a few
/// frames) costs this much disk, not a whole segment.
pub const SEGMENT_FIRST_ALLOCATION: u64 = 16 * 1024;
/// Largest single growth of a segment file. Below it a file doubles when it fills up, so
/// its allocation stays within twice its data (plus the first allocation).
pub const SEGMENT_MAX_GROWTH: u64 = 4 * 1024 * 1024;
/// Segment file allocations are whole multiples of this (the page size).
pub const SEGMENT_ALLOCATION_UNIT: u64 = 4096;

/// Magic at the start of every sorted-run file.
pub const RUN_MAGIC: [u8; 8] = *b"FRAMERUN";
/// Bytes taken by the run file header.
///
/// | bytes  | field        | notes                                              |
/// |--------|--------------|----------------------------------------------------|
/// | 0..8   | magic        | [`RUN_MAGIC`]                                      |
/// | 8..12  | version      | [`FORMAT_VERSION`]                                 |
/// | 12..16 | header_len   | [`RUN_HEADER_LEN`]                                 |
/// | 16..24 | base_offset  | first offset the run holds                         |
/// | 24..32 | end_offset   | one past the last offset; every offset between is present |
/// | 32..40 | records_end  | file position just after the last record           |
/// | 40..44 | map_crc      | CRC32 of the offset map                            |
/// | 44..60 | reserved     | zero                                               |
/// | 60..64 | header_crc   | CRC32 of bytes 0..60                               |
///
/// Records (same layout as in segments) follow the header in order-key order, up to
/// `records_end`; then the offset map: one little-endian u32 record position per offset
/// `base_offset..end_offset`, and the file ends.
pub const RUN_HEADER_LEN: usize = 64;
/// Suffix of sorted-run files.
pub const RUN_SUFFIX: &str = "run";
/// Suffix of a run being written; never part of the log.
pub const TEMP_SUFFIX: &str = "tmp";
/// Bytes of run per sparse index entry held in memory.
pub const RUN_BLOCK_BYTES: u64 = 4096;
/// The file naming the live runs and the retention watermark of a topic.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// The file naming the base offset of a topic's newest segment, written when a segment is
/// started past the first (see [`crate::wal::active`]).
pub const ACTIVE_FILE: &str = "ACTIVE";
/// The idempotency keys of frames retention removed while their dedup window was still
/// open (see [`crate::wal::removed_keys`]).
pub const REMOVED_KEYS_FILE: &str = "REMOVED_KEYS";

/// A run file header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunHeader {
    /// First offset held.
    pub base_offset: u64,
    /// One past the last offset held.
    pub end_offset: u64,
    /// Position just after the last record.
    pub records_end: u64,
    /// CRC32 of the offset map.
    pub map_crc: u32,
}

/// Encodes a run header.
pub fn encode_run_header(h: &RunHeader) -> [u8; RUN_HEADER_LEN] {
    let mut b = [0u8; RUN_HEADER_LEN];
    b[0..8].copy_from_slice(&RUN_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(RUN_HEADER_LEN as u32).to_le_bytes());
    b[16..24].copy_from_slice(&h.base_offset.to_le_bytes());
    b[24..32].copy_from_slice(&h.end_offset.to_le_bytes());
    b[32..40].copy_from_slice(&h.records_end.to_le_bytes());
    b[40..44].copy_from_slice(&h.map_crc.to_le_bytes());
    let crc = crc32fast::hash(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a run header, or says why it is not one.
pub fn decode_run_header(b: &[u8]) -> Result<RunHeader, String> {
    if b.len() < RUN_HEADER_LEN {
        return Err(format!(
            "file shorter than its {RUN_HEADER_LEN}-byte run header"
        ));
    }
    if b[0..8] != RUN_MAGIC {
        return Err("bad magic: not a framecast run".into());
    }
    if crc32fast::hash(&b[..60]) != u32::from_le_bytes(le4(&b[60..64])) {
        return Err("run header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(le4(&b[8..12]));
    if version != FORMAT_VERSION {
        return Err(format!("unsupported format version {version}"));
    }
    if u32::from_le_bytes(le4(&b[12..16])) as usize != RUN_HEADER_LEN {
        return Err("unexpected run header length".into());
    }
    let h = RunHeader {
        base_offset: u64::from_le_bytes(le8(&b[16..24])),
        end_offset: u64::from_le_bytes(le8(&b[24..32])),
        records_end: u64::from_le_bytes(le8(&b[32..40])),
        map_crc: u32::from_le_bytes(le4(&b[40..44])),
    };
    if h.end_offset < h.base_offset || h.records_end < RUN_HEADER_LEN as u64 {
        return Err("run header fields out of range".into());
    }
    Ok(h)
}

/// Name of a run file holding offsets `base..end`.
pub fn run_file_name(base: u64, end: u64) -> String {
    format!("{base:0w$}-{end:0w$}.{RUN_SUFFIX}", w = SEGMENT_NAME_DIGITS)
}

/// Parses a run file name into `(base, end)`.
pub fn parse_run_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(RUN_SUFFIX)?.strip_suffix('.')?;
    let (a, b) = stem.split_once('-')?;
    let digits = |s: &str| s.len() == SEGMENT_NAME_DIGITS && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Name of a segment file for `base_offset`.
pub fn segment_file_name(base_offset: u64) -> String {
    format!(
        "{base_offset:0width$}.{SEGMENT_SUFFIX}",
        width = SEGMENT_NAME_DIGITS
    )
}

/// Parses a segment file name back into its base offset; `None` for any other file.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?.strip_suffix('.')?;
    if stem.len() != SEGMENT_NAME_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Encodes a segment header for `base_offset`.
pub fn encode_segment_header(base_offset: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&base_offset.to_le_bytes());
    let crc = crc32fast::hash(&h[..SEGMENT_HEADER_CRC_AT]);
    h[SEGMENT_HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a segment header, returning its base offset or why it is not valid.
pub fn decode_segment_header(h: &[u8]) -> Result<u64, String> {
    if h.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "file shorter than its {SEGMENT_HEADER_LEN}-byte header"
        ));
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err("bad magic: not a framecast segment".into());
    }
    let stored = u32::from_le_bytes(le4(&h[SEGMENT_HEADER_CRC_AT..SEGMENT_HEADER_LEN]));
    if crc32fast::hash(&h[..SEGMENT_HEADER_CRC_AT]) != stored {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(le4(&h[8..12]));
    if version != FORMAT_VERSION {
        return Err(format!("unsupported format version {version}"));
    }
    let header_len = u32::from_le_bytes(le4(&h[12..16])) as usize;
    if header_len != SEGMENT_HEADER_LEN {
        return Err(format!("unexpected header length {header_len}"));
    }
    Ok(u64::from_le_bytes(le8(&h[16..24])))
}

/// The first four bytes of `b` as an array (callers pass slices of known length).
pub(crate) fn le4(b: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    a
}

/// The first eight bytes of `b` as an array (callers pass slices of known length).
pub(crate) fn le8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let name = segment_file_name(42);
        assert_eq!(name, "00000000000000000042.seg");
        assert_eq!(parse_segment_file_name(&name), Some(42));
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg.torn"),
            None
        );
        assert_eq!(parse_segment_file_name("topic.json"), None);
    }

    #[test]
    fn run_names_and_headers_round_trip() {
        let name = run_file_name(3, 10);
        assert_eq!(name, "00000000000000000003-00000000000000000010.run");
        assert_eq!(parse_run_file_name(&name), Some((3, 10)));
        assert_eq!(parse_run_file_name("00000000000000000003.seg"), None);
        let h = RunHeader {
            base_offset: 3,
            end_offset: 10,
            records_end: 500,
            map_crc: 77,
        };
        let b = encode_run_header(&h);
        assert_eq!(decode_run_header(&b), Ok(h));
        for bit in 0..RUN_HEADER_LEN * 8 {
            let mut bad = b;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_run_header(&bad).is_err(), "bit {bit} not caught");
        }
    }

    #[test]
    fn segment_header_round_trip_and_every_bit_flip_is_caught() {
        let h = encode_segment_header(7);
        assert_eq!(decode_segment_header(&h), Ok(7));
        for bit in 0..SEGMENT_HEADER_LEN * 8 {
            let mut bad = h;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_segment_header(&bad).is_err(), "bit {bit} not caught");
        }
    }
}
