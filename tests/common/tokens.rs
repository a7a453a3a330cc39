//! HS256 tokens for the tests of authentication, minted as `framecast token` mints them.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::time::Duration;

use framecast::broker::token::{mint_hs256, MintClaims};

/// A token signed with `secret` for subject `tester`.
pub fn token(
    secret: &[u8],
    publish: &[&str],
    subscribe: &[&str],
    admin: bool,
    ttl: Duration,
) -> String {
    mint_hs256(
        secret,
        &MintClaims {
            subject: "tester".into(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            admin,
            ttl,
            not_before: None,
            expected: Default::default(),
        },
    )
    .unwrap()
}
