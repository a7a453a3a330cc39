//! Who is calling and what they may do: built once from a verified token (or, with
//! authentication off, the anonymous principal allowed everything), then asked on every
//! call.

use std::time::SystemTime;

use super::pattern::PatternSet;

/// A caller's identity and permissions, with its patterns compiled.
///
/// `admin` does not imply `publish` or `subscribe`: the contract grants them separately, so
/// an operator token that manages topics cannot read or write frames unless it says so.
#[derive(Debug)]
pub struct Principal {
    subject: String,
    not_before: Option<SystemTime>,
    expires_at: Option<SystemTime>,
    publish: PatternSet,
    subscribe: PatternSet,
    admin: bool,
}

impl Principal {
    /// A principal that never expires; see [`Principal::valid_between`].
    pub fn new(
        subject: impl Into<String>,
        publish: PatternSet,
        subscribe: PatternSet,
        admin: bool,
    ) -> Principal {
        Principal {
            subject: subject.into(),
            not_before: None,
            expires_at: None,
            publish,
            subscribe,
            admin,
        }
    }

    /// The caller when authentication is off: every permission, no expiry.
    pub fn anonymous() -> Principal {
        Principal::new(
            "anonymous",
            PatternSet::everything(),
            PatternSet::everything(),
            true,
        )
    }

    /// The same principal, valid from `not_before` (None: at once) until `expires_at`
    /// (None: forever).
    pub fn valid_between(
        mut self,
        not_before: Option<SystemTime>,
        expires_at: Option<SystemTime>,
    ) -> Principal {
        self.not_before = not_before;
        self.expires_at = expires_at;
        self
    }

    /// Who the caller is (a token's `sub`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Whether the caller may publish to `topic` (`""` is `default`).
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.matches_any(topic)
    }

    /// Whether the caller may subscribe to, or read the history of, `topic`.
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.matches_any(topic)
    }

    /// Whether the caller may create and delete topics and read `/metrics`.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// Whether ListTopics shows `topic` to the caller: any permission on it, or admin.
    pub fn may_see(&self, topic: &str) -> bool {
        self.admin || self.may_publish(topic) || self.may_subscribe(topic)
    }

    /// The `publish` patterns.
    pub fn publish(&self) -> &PatternSet {
        &self.publish
    }

    /// The `subscribe` patterns.
    pub fn subscribe(&self) -> &PatternSet {
        &self.subscribe
    }

    /// When the caller's token stops being valid (None: never).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// When the caller's token starts being valid (None: from the start).
    pub fn not_before(&self) -> Option<SystemTime> {
        self.not_before
    }

    /// Whether the token has expired at `now`: RFC 7519 refuses a token on or after `exp`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|exp| now >= exp)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn anonymous_may_do_everything_forever() {
        let p = Principal::anonymous();
        for topic in ["", "default", "a.b.c"] {
            assert!(p.may_publish(topic));
            assert!(p.may_subscribe(topic));
            assert!(p.may_see(topic));
        }
        assert!(p.is_admin());
        assert_eq!(p.expires_at(), None);
        assert!(!p.is_expired(SystemTime::now() + Duration::from_secs(1 << 40)));
    }

    #[test]
    fn permissions_are_separate() {
        let p = Principal::new(
            "alice",
            PatternSet::parse(&["out.>"]).unwrap(),
            PatternSet::parse(&["in.*"]).unwrap(),
            false,
        );
        assert_eq!(p.subject(), "alice");
        assert!(p.may_publish("out.a.b"));
        assert!(!p.may_subscribe("out.a.b"));
        assert!(p.may_subscribe("in.a"));
        assert!(!p.may_publish("in.a"));
        assert!(p.may_see("out.x") && p.may_see("in.x"));
        assert!(!p.may_see("other"));
        assert!(!p.is_admin());
    }

    #[test]
    fn admin_sees_everything_but_may_not_publish_or_subscribe() {
        let p = Principal::new("ops", PatternSet::default(), PatternSet::default(), true);
        assert!(p.may_see("anything"));
        assert!(!p.may_publish("anything"));
        assert!(!p.may_subscribe("anything"));
    }

    #[test]
    fn expiry_is_exact() {
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let p = Principal::new("a", PatternSet::default(), PatternSet::default(), false)
            .valid_between(None, Some(exp));
        assert!(!p.is_expired(exp - Duration::from_nanos(1)));
        assert!(p.is_expired(exp));
        assert!(p.is_expired(exp + Duration::from_secs(1)));
    }
}
