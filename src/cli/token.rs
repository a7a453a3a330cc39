//! `framecast token`: mint an HS256 token from the server's secret file, for scripts and
//! tests that need a caller with given permissions without running an identity provider.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use framecast::broker::token::{mint_hs256, read_secret, Expected, MintClaims};

/// The token's claims and the secret that signs it.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The HS256 secret file the server reads (--auth-jwt-secret-file); one trailing
    /// newline is not part of the secret.
    #[arg(long)]
    pub secret_file: PathBuf,
    /// Who the token speaks for (the `sub` claim).
    #[arg(long)]
    pub subject: String,
    /// A topic pattern the token may publish to (a.b, a.*, a.>, >); repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub publish: Vec<String>,
    /// A topic pattern the token may subscribe to and read the history of; repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub subscribe: Vec<String>,
    /// May create and delete topics and read /metrics (not publish or subscribe).
    #[arg(long)]
    pub admin: bool,
    /// How long the token is valid (90s, 2m, 1h, 7d).
    #[arg(long, default_value = "1h", value_parser = framecast::server::config::parse_duration)]
    pub ttl: Duration,
    /// The issuer (`iss`), for a server started with --auth-issuer.
    #[arg(long, value_name = "ISS")]
    pub issuer: Option<String>,
    /// The audience (`aud`), for a server started with --auth-audience.
    #[arg(long, value_name = "AUD")]
    pub audience: Option<String>,
}

/// Prints the token on one line; a bad secret file, pattern or ttl exits 2.
pub fn run(args: TokenArgs) -> ExitCode {
    match mint(args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("framecast token: {e}");
            ExitCode::from(2)
        }
    }
}

fn mint(args: TokenArgs) -> Result<String, String> {
    let secret = read_secret(&args.secret_file)?;
    mint_hs256(
        &secret,
        &MintClaims {
            subject: args.subject,
            publish: args.publish,
            subscribe: args.subscribe,
            admin: args.admin,
            ttl: args.ttl,
            not_before: None,
            expected: Expected {
                issuer: args.issuer,
                audience: args.audience,
            },
        },
    )
}
