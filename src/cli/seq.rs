//! Parsing a seq_no given on the command line, with a message that says what is wrong.

/// A seq_no: a non-negative integer (`-1` is refused with a plain message, not clap's
/// "unexpected argument").
pub fn parse_seq_no(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| format!("'{s}' must be a non-negative integer (a seq_no, 0 to 2^64-1)"))
}

#[cfg(test)]
mod tests {
    use super::parse_seq_no;

    #[test]
    fn seq_nos() {
        assert_eq!(parse_seq_no("0"), Ok(0));
        assert_eq!(parse_seq_no("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_seq_no("-1")
            .unwrap_err()
            .contains("must be a non-negative integer"));
        assert!(parse_seq_no("x").is_err());
    }
}
