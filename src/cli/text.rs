//! Rendering payloads for people: printable text or hex.

/// Renders a payload for a terminal: quoted text when printable UTF-8, else `0x` hex.
pub fn payload_text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().all(|c| !c.is_control() || c == ' ' || c == '\t') => format!("{s:?}"),
        _ => format!("0x{}", hex(b)),
    }
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
