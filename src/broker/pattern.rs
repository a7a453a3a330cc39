//! Topic patterns, the unit of a token's permissions: a topic name whose `.`-separated
//! tokens may be `*` (exactly one token) or, last, `>` (one or more tokens). `>` alone
//! matches every topic. A pattern is parsed once, when its token is verified, and then
//! matched on every call without allocating.

use std::fmt;

/// The name a request's empty topic stands for.
const DEFAULT_TOPIC: &str = "default";

/// One `.`-separated token of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// This exact token.
    Literal(Box<str>),
    /// `*`: any one token.
    One,
    /// `>`: one or more tokens, whatever they are; only ever last.
    Rest,
}

/// A compiled topic pattern, e.g. `prices.*`, `prices.>`, `>` or `orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    text: Box<str>,
    tokens: Box<[Token]>,
}

impl TopicPattern {
    /// Compiles `text`; the error says which rule it breaks.
    pub fn parse(text: &str) -> Result<TopicPattern, String> {
        if text.is_empty() {
            return Err("empty topic pattern (use '>' for every topic)".to_string());
        }
        let count = text.split('.').count();
        let mut tokens = Vec::with_capacity(count);
        for (i, token) in text.split('.').enumerate() {
            let token = match token {
                "" => {
                    return Err(format!(
                        "topic pattern '{text}' has an empty token (two dots in a row, or a dot at an end)"
                    ))
                }
                "*" => Token::One,
                ">" if i + 1 == count => Token::Rest,
                ">" => {
                    return Err(format!(
                        "topic pattern '{text}': '>' may only be the last token"
                    ))
                }
                t if t.contains(['*', '>']) => {
                    return Err(format!(
                        "topic pattern '{text}': '{t}' mixes a wildcard with other characters ('*' and '>' stand alone between dots)"
                    ))
                }
                t if !t
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-')) =>
                {
                    return Err(format!(
                        "topic pattern '{text}': '{t}' has a character outside [A-Za-z0-9_-]"
                    ))
                }
                t => Token::Literal(t.into()),
            };
            tokens.push(token);
        }
        Ok(TopicPattern {
            text: text.into(),
            tokens: tokens.into_boxed_slice(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` is one of the pattern's topics; `""` is the topic `default`.
    ///
    /// Topic tokens are whatever lies between dots, so a legal but odd name such as `a..b`
    /// has an empty middle token, which `*` matches like any other.
    pub fn matches(&self, topic: &str) -> bool {
        let topic = if topic.is_empty() {
            DEFAULT_TOPIC
        } else {
            topic
        };
        let mut parts = topic.split('.');
        for token in self.tokens.iter() {
            match token {
                Token::Rest => return parts.next().is_some(),
                Token::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(literal) => {
                    if parts.next() != Some(&**literal) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The patterns of one permission (say, a token's `publish` claim): a topic is allowed when
/// any of them matches. Empty: nothing is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternSet {
    patterns: Vec<TopicPattern>,
}

impl PatternSet {
    /// The set of these patterns.
    pub fn new(patterns: Vec<TopicPattern>) -> PatternSet {
        PatternSet { patterns }
    }

    /// The set that allows every topic (`>`).
    pub fn everything() -> PatternSet {
        PatternSet::new(vec![TopicPattern {
            text: ">".into(),
            tokens: Box::new([Token::Rest]),
        }])
    }

    /// Compiles each text; the first that does not parse is the error.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<PatternSet, String> {
        texts
            .iter()
            .map(|t| TopicPattern::parse(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(PatternSet::new)
    }

    /// Whether any pattern matches `topic` (`""` is `default`).
    pub fn matches_any(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(topic))
    }

    /// Whether the set holds no pattern, and so allows nothing.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns, in the order given.
    pub fn patterns(&self) -> &[TopicPattern] {
        &self.patterns
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing
mod tests {
    use super::*;

    fn p(text: &str) -> TopicPattern {
        TopicPattern::parse(text).unwrap()
    }

    #[test]
    fn star_is_exactly_one_token() {
        let a = p("a.*");
        assert!(a.matches("a.b"));
        assert!(a.matches("a.prices-1"));
        assert!(!a.matches("a"));
        assert!(!a.matches("a.b.c"));
        assert!(!a.matches("b.c"));
        let star = p("*");
        assert!(star.matches("x"));
        assert!(!star.matches("x.y"));
        assert!(p("*.b").matches("a.b"));
        assert!(!p("*.b").matches("a.c"));
        assert!(p("a.*.c").matches("a.b.c"));
        assert!(!p("a.*.c").matches("a.b.d"));
    }

    #[test]
    fn greater_than_is_one_or_more_tokens() {
        let a = p("a.>");
        assert!(a.matches("a.b"));
        assert!(a.matches("a.b.c"));
        assert!(!a.matches("a"));
        assert!(!a.matches("ab.c"));
        assert!(!a.matches("b.a"));
        assert!(p("*.>").matches("a.b.c"));
        assert!(!p("*.>").matches("a"));
    }

    #[test]
    fn greater_than_alone_matches_every_topic() {
        for all in [p(">"), PatternSet::everything().patterns()[0].clone()] {
            for topic in ["default", "", "x", "a.b.c", "prices.eu-1_x"] {
                assert!(all.matches(topic), "'>' should match '{topic}'");
            }
        }
    }

    #[test]
    fn literals_match_only_themselves() {
        let a = p("prices.eu");
        assert!(a.matches("prices.eu"));
        assert!(!a.matches("prices.e"));
        assert!(!a.matches("prices.eu.x"));
        assert!(!a.matches("prices"));
        assert!(!a.matches("Prices.eu"));
        assert!(p("orders").matches("orders"));
        assert!(!p("orders").matches("orders2"));
    }

    #[test]
    fn the_empty_topic_is_default() {
        assert!(p("default").matches(""));
        assert!(p("*").matches(""));
        assert!(!p("other").matches(""));
        assert!(!p("default.>").matches(""));
    }

    #[test]
    fn invalid_patterns_are_refused_with_the_rule_they_break() {
        for (bad, why) in [
            ("", "empty topic pattern"),
            ("a..b", "empty token"),
            (".a", "empty token"),
            ("a.", "empty token"),
            (">.a", "last token"),
            ("a.>.b", "last token"),
            ("a*", "mixes a wildcard"),
            ("a.b>", "mixes a wildcard"),
            ("**", "mixes a wildcard"),
            ("a.b c", "outside [A-Za-z0-9_-]"),
            ("a/b", "outside [A-Za-z0-9_-]"),
            ("é", "outside [A-Za-z0-9_-]"),
        ] {
            let err = TopicPattern::parse(bad).expect_err(bad);
            assert!(err.contains(why), "'{bad}': {err}");
        }
    }

    #[test]
    fn a_set_allows_what_any_pattern_allows() {
        let set = PatternSet::parse(&["a.*", "b"]).unwrap();
        assert!(set.matches_any("a.x"));
        assert!(set.matches_any("b"));
        assert!(!set.matches_any("c"));
        assert!(!PatternSet::default().matches_any("a"));
        assert!(PatternSet::default().is_empty());
        let err = PatternSet::parse(&["ok", "a..b"]).unwrap_err();
        assert!(err.contains("a..b"), "{err}");
        assert_eq!(p("a.>").to_string(), "a.>");
    }
}
