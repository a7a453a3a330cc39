//! What checking a token costs a call with authentication on. The gRPC door checks it
//! twice — once in the layer that refuses an unauthenticated call before its message is
//! read (`src/server/preauth.rs`), once in the handler — so the layer adds one check of a
//! token the server has already verified (a cache hit). For scale, the first check of a
//! token (its HS256 signature verified and its patterns compiled).
//!
//! Run with `cargo bench --bench auth`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use framecast::broker::token::{mint_hs256, Authenticator, MintClaims};

const SECRET: &[u8] = b"a benchmark secret of enough bytes";

fn header() -> String {
    let token = mint_hs256(
        SECRET,
        &MintClaims {
            subject: "bench".into(),
            publish: vec!["room.*".into(), "chat.>".into()],
            subscribe: vec![">".into()],
            admin: false,
            ttl: Duration::from_secs(3600),
            not_before: None,
            expected: Default::default(),
        },
    )
    .unwrap();
    format!("Bearer {token}")
}

fn check(c: &mut Criterion) {
    let header = header();
    let mut group = c.benchmark_group("auth");
    group.throughput(Throughput::Elements(1));

    let auth = Authenticator::from_keys(Some(SECRET), None)
        .unwrap()
        .unwrap();
    auth.from_header(Some(&header)).unwrap();
    group.bench_function("token_seen_before", |b| {
        b.iter(|| auth.from_header(Some(black_box(&header))).unwrap())
    });

    group.bench_function("token_first_seen", |b| {
        b.iter_batched(
            || {
                Authenticator::from_keys(Some(SECRET), None)
                    .unwrap()
                    .unwrap()
            },
            |auth| auth.from_header(Some(black_box(&header))).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
