//! JSON Web Tokens: verifying a caller's token into a [`Principal`], and minting HS256 tokens
//! for scripts and tests (`framecast token`).
//!
//! A server is configured with HS256 secrets, public keys (RSA → RS256, EC P-256 →
//! ES256), or both; more than one of a kind while keys are rotated. A token is checked only
//! with the keys of its own algorithm, and an algorithm without a configured key is refused
//! before any signature check: that is what stops `alg: none` and the classic confusion
//! where an attacker HMAC-signs a token with the server's public key as the secret. A
//! server may also require an issuer (`iss`) and an audience (`aud`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::pattern::PatternSet;
use super::principal::Principal;

/// Verified tokens remembered. A client making many unary calls sends the same token each
/// time; past this many distinct tokens the cache starts over rather than tracking age.
const CACHE_CAPACITY: usize = 4096;

/// Why a token was refused. Every variant is `UNAUTHENTICATED` to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The call carried no token.
    #[error("no bearer token: this server requires authorization: Bearer <JWT>")]
    Missing,
    /// Not a JWT, not `Bearer <token>`, or claims missing or of the wrong shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not match the configured key.
    #[error("bad token signature: not signed with this server's key")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired at {}", utc(*.0))]
    Expired(SystemTime),
    /// `nbf` is still ahead.
    #[error("token not valid before {}", utc(*.0))]
    NotYetValid(SystemTime),
    /// The token's `alg` is `none`, or has no key configured on this server.
    #[error("token algorithm refused: {0}")]
    Algorithm(String),
    /// Its `iss` or `aud` is not the one this server requires.
    #[error("token refused: {0}")]
    NotForThisServer(String),
}

/// What a server requires of a token beyond its signature and times (`--auth-issuer`,
/// `--auth-audience`); `None` requires nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// The `iss` a token must carry.
    pub issuer: Option<String>,
    /// A value a token's `aud` (one string or an array) must hold.
    pub audience: Option<String>,
}

/// Verifies tokens against the configured keys and remembers the ones that passed.
pub struct Authenticator {
    /// HS256: the secrets, in the order given.
    secrets: Vec<DecodingKey>,
    /// RS256 or ES256: the public keys and the one algorithm each verifies.
    publics: Vec<(DecodingKey, Algorithm)>,
    expected: Expected,
    cache: Mutex<HashMap<String, Arc<Principal>>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys stay out of logs; which algorithms are accepted is what an operator needs.
        f.debug_struct("Authenticator")
            .field("accepts", &self.accepted())
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// The authenticator of `--auth-jwt-secret-file` and `--auth-jwt-public-key` (each may
    /// be given more than once: a token verified by any key of its algorithm is accepted);
    /// `Ok(None)` when neither is given (authentication off).
    pub fn from_files<'a>(
        secret_files: impl IntoIterator<Item = &'a Path>,
        public_key_files: impl IntoIterator<Item = &'a Path>,
    ) -> Result<Option<Authenticator>, String> {
        let secrets = secret_files
            .into_iter()
            .map(read_secret)
            .collect::<Result<Vec<_>, _>>()?;
        let publics = public_key_files
            .into_iter()
            .map(|path| {
                let pem = std::fs::read(path).map_err(|e| {
                    format!(
                        "cannot read the JWT public key file {}: {e}",
                        path.display()
                    )
                })?;
                public_key(&pem)
                    .map_err(|e| format!("the JWT public key file {}: {e}", path.display()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Authenticator::new(secrets.iter().map(Vec::as_slice), publics)
    }

    /// The authenticator of an HS256 secret (used as given, newline and all) and a PEM
    /// public key; `Ok(None)` when neither is given.
    pub fn from_keys(
        secret: Option<&[u8]>,
        public_key_pem: Option<&[u8]>,
    ) -> Result<Option<Authenticator>, String> {
        let public = public_key_pem
            .map(|pem| public_key(pem).map_err(|e| format!("the JWT public key: {e}")))
            .transpose()?;
        Authenticator::new(secret, public)
    }

    fn new<'a>(
        secrets: impl IntoIterator<Item = &'a [u8]>,
        publics: impl IntoIterator<Item = (DecodingKey, Algorithm)>,
    ) -> Result<Option<Authenticator>, String> {
        let secrets = secrets
            .into_iter()
            .map(|s| {
                if s.is_empty() {
                    return Err("the JWT secret is empty".to_string());
                }
                DecodingKey::from_secret(s).map_err(|e| format!("the JWT secret: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let publics: Vec<_> = publics.into_iter().collect();
        if secrets.is_empty() && publics.is_empty() {
            return Ok(None);
        }
        Ok(Some(Authenticator {
            secrets,
            publics,
            expected: Expected::default(),
            cache: Mutex::new(HashMap::new()),
        }))
    }

    /// This authenticator, also requiring what `expected` names of every token.
    pub fn expecting(mut self, expected: Expected) -> Authenticator {
        self.expected = expected;
        self
    }

    /// The algorithms accepted, e.g. `HS256 and RS256`.
    pub fn accepted(&self) -> String {
        let mut names: Vec<&str> = Vec::with_capacity(3);
        if !self.secrets.is_empty() {
            names.push("HS256");
        }
        for (_, alg) in &self.publics {
            let name = algorithm_name(*alg);
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names.join(" and ")
    }

    /// The caller of an `authorization` header value, `Bearer <token>` (the scheme in any
    /// case).
    pub fn from_header(&self, value: Option<&str>) -> Result<Arc<Principal>, AuthError> {
        let value = value.ok_or(AuthError::Missing)?;
        self.verify(bearer_token(value)?)
    }

    /// The caller of `token`: signature, algorithm, claims and validity checked. A token seen
    /// before skips the signature check, never the `exp`/`nbf` check.
    pub fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        self.verify_at(token, SystemTime::now())
    }

    fn verify_at(&self, token: &str, now: SystemTime) -> Result<Arc<Principal>, AuthError> {
        let cached = self.cache.lock().get(token).cloned();
        if let Some(principal) = cached {
            check_validity(&principal, now)?;
            return Ok(principal);
        }
        let principal = Arc::new(self.verify_signed(token)?);
        check_validity(&principal, now)?;
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(token.to_owned(), Arc::clone(&principal));
        Ok(principal)
    }

    /// Checks the algorithm, the signature, the claims' shape and what the server expects
    /// of them; not the time.
    fn verify_signed(&self, token: &str) -> Result<Principal, AuthError> {
        let alg = header_algorithm(token)?;
        let (keys, alg): (Vec<&DecodingKey>, Algorithm) = match alg.as_str() {
            "none" => {
                return Err(AuthError::Algorithm(
                    "'none' (an unsigned token) is never accepted".to_string(),
                ))
            }
            "HS256" => (self.secrets.iter().collect(), Algorithm::HS256),
            "RS256" | "ES256" => {
                let mut of_alg = self
                    .publics
                    .iter()
                    .filter(|(_, configured)| algorithm_name(*configured) == alg)
                    .peekable();
                let Some((_, configured)) = of_alg.peek() else {
                    return Err(self.no_key_for(&alg));
                };
                let configured = *configured;
                (of_alg.map(|(key, _)| key).collect(), configured)
            }
            _ => return Err(self.no_key_for(&alg)),
        };
        if keys.is_empty() {
            return Err(self.no_key_for(algorithm_name(alg)));
        }
        // Only the signature and the shape are left to the library: the time checks are ours,
        // exact and repeated on every cached use.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let mut result = Err(AuthError::BadSignature);
        for key in keys {
            result = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidSignature => AuthError::BadSignature,
                    ErrorKind::InvalidAlgorithm => AuthError::Algorithm(e.to_string()),
                    _ => AuthError::Malformed(e.to_string()),
                }
            });
            // Another key of the same algorithm may have signed it (keys being rotated).
            if !matches!(result, Err(AuthError::BadSignature)) {
                break;
            }
        }
        let claims = result?.claims;
        claims.check(&self.expected)?;
        claims.into_principal()
    }

    fn no_key_for(&self, alg: &str) -> AuthError {
        AuthError::Algorithm(format!(
            "'{alg}', but this server accepts {} only",
            self.accepted()
        ))
    }
}

/// Reads an HS256 secret file: its bytes with one trailing newline (`\n` or `\r\n`) removed,
/// since editors and `echo` add one that nobody means as part of the secret.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let mut secret = std::fs::read(path)
        .map_err(|e| format!("cannot read the JWT secret file {}: {e}", path.display()))?;
    if secret.ends_with(b"\r\n") {
        secret.truncate(secret.len() - 2);
    } else if secret.ends_with(b"\n") {
        secret.truncate(secret.len() - 1);
    }
    if secret.is_empty() {
        return Err(format!("the JWT secret file {} is empty", path.display()));
    }
    Ok(secret)
}

/// What [`mint_hs256`] puts in a token.
#[derive(Debug, Clone)]
pub struct MintClaims {
    /// `sub`: who the token speaks for.
    pub subject: String,
    /// `publish`: topic patterns it may publish to.
    pub publish: Vec<String>,
    /// `subscribe`: topic patterns it may subscribe to.
    pub subscribe: Vec<String>,
    /// `admin`: may create and delete topics and read `/metrics`.
    pub admin: bool,
    /// How long from now the token is valid (`exp`).
    pub ttl: Duration,
    /// `nbf`, if the token should start being valid later.
    pub not_before: Option<SystemTime>,
    /// `iss` and `aud`, for a server that requires them.
    pub expected: Expected,
}

/// An HS256 token for `claims`, signed with `secret`; every pattern is checked first, so a
/// token that the server would refuse as malformed is never minted.
pub fn mint_hs256(secret: &[u8], claims: &MintClaims) -> Result<String, String> {
    if secret.is_empty() {
        return Err("the secret is empty".to_string());
    }
    if claims.subject.is_empty() {
        return Err("the subject is empty".to_string());
    }
    if claims.ttl.is_zero() {
        return Err("the ttl must be longer than 0".to_string());
    }
    PatternSet::parse(&claims.publish).map_err(|e| format!("publish: {e}"))?;
    PatternSet::parse(&claims.subscribe).map_err(|e| format!("subscribe: {e}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_string())?;
    let exp = now
        .checked_add(claims.ttl)
        .ok_or_else(|| "the ttl is too long".to_string())?;
    // Rounded up: a token never expires before the ttl asked for.
    let exp = exp.as_secs() + u64::from(exp.subsec_nanos() > 0);
    let nbf = claims
        .not_before
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .map_err(|_| "not_before is before 1970".to_string())
        })
        .transpose()?;
    let minted = Minted {
        sub: &claims.subject,
        iat: now.as_secs(),
        exp,
        nbf,
        publish: &claims.publish,
        subscribe: &claims.subscribe,
        admin: claims.admin,
        iss: claims.expected.issuer.as_deref(),
        aud: claims.expected.audience.as_deref(),
    };
    let key = EncodingKey::from_secret(secret).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &minted, &key).map_err(|e| e.to_string())
}

/// The claims framecast reads; anything else in a token is ignored.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    iss: Option<String>,
    aud: Option<Audience>,
    /// NumericDate: seconds since 1970, which RFC 7519 allows to be fractional.
    exp: Option<f64>,
    nbf: Option<f64>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    admin: bool,
}

/// `aud`: one string, or an array of them (RFC 7519, 4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Claims {
    /// Refuses a token whose `iss` or `aud` is not what the server requires.
    fn check(&self, expected: &Expected) -> Result<(), AuthError> {
        if let Some(issuer) = &expected.issuer {
            if self.iss.as_ref() != Some(issuer) {
                return Err(AuthError::NotForThisServer(match &self.iss {
                    Some(iss) => format!("issued by {iss:?}, not by this server's issuer"),
                    None => "the claim 'iss' is missing (this server requires one)".to_string(),
                }));
            }
        }
        if let Some(audience) = &expected.audience {
            let holds = match &self.aud {
                Some(Audience::One(aud)) => aud == audience,
                Some(Audience::Many(auds)) => auds.contains(audience),
                None => false,
            };
            if !holds {
                return Err(AuthError::NotForThisServer(if self.aud.is_some() {
                    "its audience ('aud') does not name this server's".to_string()
                } else {
                    "the claim 'aud' is missing (this server requires one)".to_string()
                }));
            }
        }
        Ok(())
    }

    fn into_principal(self) -> Result<Principal, AuthError> {
        let sub = self
            .sub
            .ok_or_else(|| AuthError::Malformed("the claim 'sub' is missing".to_string()))?;
        if sub.is_empty() {
            return Err(AuthError::Malformed("the claim 'sub' is empty".to_string()));
        }
        let exp = self
            .exp
            .ok_or_else(|| AuthError::Malformed("the claim 'exp' is missing".to_string()))?;
        let exp = numeric_date("exp", exp)?;
        let nbf = self.nbf.map(|n| numeric_date("nbf", n)).transpose()?;
        let publish = PatternSet::parse(&self.publish)
            .map_err(|e| AuthError::Malformed(format!("the claim 'publish': {e}")))?;
        let subscribe = PatternSet::parse(&self.subscribe)
            .map_err(|e| AuthError::Malformed(format!("the claim 'subscribe': {e}")))?;
        Ok(Principal::new(sub, publish, subscribe, self.admin).valid_between(nbf, Some(exp)))
    }
}

/// The claims [`mint_hs256`] writes.
#[derive(Serialize)]
struct Minted<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    publish: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    subscribe: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    admin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// The part of a token's header read before any key is chosen.
#[derive(Deserialize)]
struct PeekedHeader {
    alg: String,
}

/// The `alg` a token claims, read without trusting it: it only picks the key, or refuses.
fn header_algorithm(token: &str) -> Result<String, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "not a JWT (three base64url parts separated by dots)".to_string(),
        ));
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|e| AuthError::Malformed(format!("the header is not base64url: {e}")))?;
    let header: PeekedHeader = serde_json::from_slice(&json)
        .map_err(|e| AuthError::Malformed(format!("the header: {e}")))?;
    Ok(header.alg)
}

/// The claims a node's own token must carry, read without checking its signature (the
/// leader checks that): a cluster node started with `--cluster-token-file` refuses to start
/// when its token could never be accepted by `Follow`, rather than being turned away at
/// every connection.
pub fn check_node_token(token: &str, node_id: &str) -> Result<(), String> {
    #[derive(Deserialize)]
    struct Peeked {
        sub: Option<String>,
        #[serde(default)]
        admin: bool,
    }
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| "not a JWT (three base64url parts separated by dots)".to_string())?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| format!("the claims are not base64url: {e}"))?;
    let claims: Peeked = serde_json::from_slice(&json).map_err(|e| format!("the claims: {e}"))?;
    let want = super::core::node_subject(node_id);
    if claims.sub.as_deref() != Some(want.as_str()) || !claims.admin {
        return Err(format!(
            "node '{node_id}' follows with a token whose subject is '{want}' and which has \
             admin (this one: subject {:?}, admin {}); mint one with `framecast token \
             --subject {want} --admin`",
            claims.sub.unwrap_or_default(),
            claims.admin
        ));
    }
    Ok(())
}

/// The token of a `Bearer <token>` header value. The value is never echoed: a client that
/// forgot the scheme would otherwise see its token in the server's logs.
fn bearer_token(value: &str) -> Result<&str, AuthError> {
    let value = value.trim();
    let (scheme, token) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed(
            "the authorization header is not 'Bearer <token>'".to_string(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed(
            "the authorization header has no token after 'Bearer'".to_string(),
        ));
    }
    Ok(token)
}

/// Refuses a principal outside its validity at `now`.
fn check_validity(principal: &Principal, now: SystemTime) -> Result<(), AuthError> {
    if principal.is_expired(now) {
        if let Some(exp) = principal.expires_at() {
            return Err(AuthError::Expired(exp));
        }
    }
    match principal.not_before() {
        Some(nbf) if now < nbf => Err(AuthError::NotYetValid(nbf)),
        _ => Ok(()),
    }
}

/// A NumericDate claim as a time.
fn numeric_date(claim: &str, secs: f64) -> Result<SystemTime, AuthError> {
    let invalid = || {
        AuthError::Malformed(format!(
            "the claim '{claim}' is not a time in seconds since 1970"
        ))
    };
    let since_epoch = Duration::try_from_secs_f64(secs).map_err(|_| invalid())?;
    UNIX_EPOCH.checked_add(since_epoch).ok_or_else(invalid)
}

/// Loads a PEM public key: RSA is verified with RS256, EC P-256 with ES256.
fn public_key(pem: &[u8]) -> Result<(DecodingKey, Algorithm), String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    // jsonwebtoken parses the key itself only when verifying, so a bad key is caught here,
    // at startup, rather than as a refused token later.
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        if key
            .try_get_as_bytes()
            .is_ok_and(|der| rsa::PublicKey::from_pkcs1_der(der).is_ok())
        {
            return Ok((key, Algorithm::RS256));
        }
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return match key
            .try_get_as_bytes()
            .map(p256::ecdsa::VerifyingKey::from_sec1_bytes)
        {
            Ok(Ok(_)) => Ok((key, Algorithm::ES256)),
            _ => Err(
                "an EC key not on the P-256 curve (ES256 is the only EC algorithm accepted)"
                    .to_string(),
            ),
        };
    }
    if String::from_utf8_lossy(pem).contains("PRIVATE KEY") {
        return Err(
            "this is a private key; give its public key (openssl pkey -in KEY -pubout)".to_string(),
        );
    }
    Err("not an RSA or EC P-256 public key in PEM".to_string())
}

fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "another algorithm",
    }
}

/// `t` as RFC 3339 UTC to the second, e.g. `2025-01-31T12:00:00Z`.
fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing
mod tests {
    use std::io::Write;
    use std::sync::OnceLock;

    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};

    use super::*;

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims() -> Value {
        json!({
            "sub": "alice",
            "exp": now_secs() + 600,
            "publish": ["prices.>"],
            "subscribe": ["prices.*", "news"],
        })
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        encode(&Header::new(alg), claims, key).unwrap()
    }

    fn hs256(secret: &[u8], claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(secret).unwrap(),
            claims,
        )
    }

    fn with_secret(secret: &[u8]) -> Authenticator {
        Authenticator::from_keys(Some(secret), None)
            .unwrap()
            .unwrap()
    }

    fn with_public_key(pem: &str) -> Authenticator {
        Authenticator::from_keys(None, Some(pem.as_bytes()))
            .unwrap()
            .unwrap()
    }

    /// (private PKCS#8 PEM, public SPKI PEM), generated once: RSA key generation is slow.
    fn rsa_keys() -> &'static (String, String) {
        static KEYS: OnceLock<(String, String)> = OnceLock::new();
        KEYS.get_or_init(|| {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
            use rsa::Generate;
            let private = rsa::PrivateKey::generate();
            let public = private.to_public_key();
            (
                private.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                public.to_public_key_pem(LineEnding::LF).unwrap(),
            )
        })
    }

    fn ec_keys() -> (String, String) {
        use p256::elliptic_curve::Generate;
        use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let private = p256::SecretKey::generate();
        (
            private.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
            private
                .public_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        )
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn mint_claims() -> MintClaims {
        MintClaims {
            subject: "bot".to_string(),
            publish: vec!["a.>".to_string()],
            subscribe: vec!["b.*".to_string()],
            admin: true,
            ttl: Duration::from_secs(3600),
            not_before: None,
            expected: Expected::default(),
        }
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let token = mint_hs256(b"s3cret", &mint_claims()).unwrap();
        let before = SystemTime::now();
        let p = with_secret(b"s3cret").verify(&token).unwrap();
        assert_eq!(p.subject(), "bot");
        assert!(p.may_publish("a.x.y") && !p.may_publish("b.x"));
        assert!(p.may_subscribe("b.x") && !p.may_subscribe("a.x"));
        assert!(p.is_admin());
        let exp = p.expires_at().unwrap();
        assert!(exp >= before + Duration::from_secs(3599));
        assert!(exp <= before + Duration::from_secs(3602));
        assert_eq!(p.not_before(), None);
    }

    #[test]
    fn minting_refuses_what_the_server_would_refuse() {
        let mut bad = mint_claims();
        bad.publish.push("a..b".to_string());
        let err = mint_hs256(b"s", &bad).unwrap_err();
        assert!(err.contains("a..b"), "{err}");
        assert!(mint_hs256(b"", &mint_claims()).is_err());
        let mut no_sub = mint_claims();
        no_sub.subject.clear();
        assert!(mint_hs256(b"s", &no_sub).is_err());
    }

    #[test]
    fn one_trailing_newline_of_the_secret_file_is_stripped() {
        let token = mint_hs256(b"s3cret", &mint_claims()).unwrap();
        for content in ["s3cret\n", "s3cret\r\n", "s3cret"] {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            file.write_all(content.as_bytes()).unwrap();
            let auth = Authenticator::from_files(Some(file.path()), None)
                .unwrap()
                .unwrap();
            assert!(auth.verify(&token).is_ok(), "{content:?}");
        }
        // Only one: a second newline is part of the secret.
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"s3cret\n\n").unwrap();
        let auth = Authenticator::from_files(Some(file.path()), None)
            .unwrap()
            .unwrap();
        assert_eq!(auth.verify(&token).unwrap_err(), AuthError::BadSignature);
    }

    #[test]
    fn an_empty_or_missing_secret_file_is_refused() {
        for content in ["", "\n"] {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            file.write_all(content.as_bytes()).unwrap();
            let err = Authenticator::from_files(Some(file.path()), None).unwrap_err();
            assert!(err.contains("empty"), "{err}");
        }
        let err =
            Authenticator::from_files(Some(Path::new("/nonexistent/secret")), None).unwrap_err();
        assert!(err.contains("/nonexistent/secret"), "{err}");
        assert!(Authenticator::from_keys(Some(b""), None).is_err());
    }

    #[test]
    fn no_key_means_no_authentication() {
        assert!(Authenticator::from_files(None, None).unwrap().is_none());
        assert!(Authenticator::from_keys(None, None).unwrap().is_none());
    }

    #[test]
    fn a_wrong_secret_is_a_bad_signature() {
        let token = hs256(b"other", &claims());
        assert_eq!(
            with_secret(b"s3cret").verify(&token).unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let mut c = claims();
        c["exp"] = json!(now_secs() - 1);
        let err = with_secret(b"k").verify(&hs256(b"k", &c)).unwrap_err();
        assert!(matches!(err, AuthError::Expired(_)), "{err:?}");
        assert!(err.to_string().starts_with("token expired at 20"), "{err}");
    }

    #[test]
    fn expiry_is_exact_to_the_second() {
        let exp = now_secs() + 100;
        let mut c = claims();
        c["exp"] = json!(exp);
        let token = hs256(b"k", &c);
        let auth = with_secret(b"k");
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        assert!(auth.verify_at(&token, at(exp - 1, 999_999_999)).is_ok());
        assert_eq!(
            auth.verify_at(&token, at(exp, 0)).unwrap_err(),
            AuthError::Expired(at(exp, 0))
        );
    }

    #[test]
    fn a_token_not_yet_valid_is_refused() {
        let mut c = claims();
        let nbf = now_secs() + 300;
        c["nbf"] = json!(nbf);
        let err = with_secret(b"k").verify(&hs256(b"k", &c)).unwrap_err();
        assert_eq!(
            err,
            AuthError::NotYetValid(UNIX_EPOCH + Duration::from_secs(nbf))
        );
        c["nbf"] = json!(now_secs() - 1);
        assert!(with_secret(b"k").verify(&hs256(b"k", &c)).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64(claims().to_string().as_bytes());
        let token = format!("{header}.{payload}.");
        let err = with_secret(b"k").verify(&token).unwrap_err();
        assert!(matches!(err, AuthError::Algorithm(_)), "{err:?}");
        assert!(err.to_string().contains("none"), "{err}");
        // Spelled otherwise, or with a signature appended, still refused.
        let token = format!("{}.{payload}.c2ln", b64(br#"{"alg":"None"}"#));
        assert!(matches!(
            with_secret(b"k").verify(&token),
            Err(AuthError::Algorithm(_))
        ));
    }

    #[test]
    fn rs256_verifies_with_an_rsa_public_key() {
        let (private, public) = rsa_keys();
        let key = EncodingKey::from_rsa_pem(private.as_bytes()).unwrap();
        let token = sign(Algorithm::RS256, &key, &claims());
        let p = with_public_key(public).verify(&token).unwrap();
        assert_eq!(p.subject(), "alice");
        assert!(p.may_subscribe("news") && !p.may_publish("news"));
        // Another key's signature is not accepted.
        let (other_private, _) = ec_keys();
        let other = EncodingKey::from_ec_pem(other_private.as_bytes()).unwrap();
        let token = sign(Algorithm::ES256, &other, &claims());
        assert!(matches!(
            with_public_key(public).verify(&token),
            Err(AuthError::Algorithm(_))
        ));
    }

    #[test]
    fn es256_verifies_with_an_ec_public_key() {
        let (private, public) = ec_keys();
        let key = EncodingKey::from_ec_pem(private.as_bytes()).unwrap();
        let token = sign(Algorithm::ES256, &key, &claims());
        assert_eq!(
            with_public_key(&public).verify(&token).unwrap().subject(),
            "alice"
        );
        let (_, other_public) = ec_keys();
        assert_eq!(
            with_public_key(&other_public).verify(&token).unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        // The algorithm confusion attack: the public key is public, so an attacker can use its
        // PEM bytes as an HMAC secret. A server with only that key must not try HMAC at all.
        let (_, public) = rsa_keys();
        let forged = hs256(public.as_bytes(), &claims());
        let err = with_public_key(public).verify(&forged).unwrap_err();
        assert!(matches!(err, AuthError::Algorithm(_)), "{err:?}");
        assert!(err.to_string().contains("RS256"), "{err}");
        let (_, ec_public) = ec_keys();
        let forged = hs256(ec_public.as_bytes(), &claims());
        assert!(matches!(
            with_public_key(&ec_public).verify(&forged),
            Err(AuthError::Algorithm(_))
        ));
        // With both keys configured, HS256 is checked with the secret, never the public key.
        let both = Authenticator::from_keys(Some(b"s3cret"), Some(public.as_bytes()))
            .unwrap()
            .unwrap();
        let forged = hs256(public.as_bytes(), &claims());
        assert_eq!(both.verify(&forged).unwrap_err(), AuthError::BadSignature);
    }

    #[test]
    fn with_both_keys_each_algorithm_uses_its_own() {
        let (private, public) = rsa_keys();
        let both = Authenticator::from_keys(Some(b"s3cret"), Some(public.as_bytes()))
            .unwrap()
            .unwrap();
        assert_eq!(both.accepted(), "HS256 and RS256");
        let rs = sign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
            &claims(),
        );
        assert!(both.verify(&rs).is_ok());
        assert!(both.verify(&hs256(b"s3cret", &claims())).is_ok());
    }

    #[test]
    fn public_key_tokens_are_refused_without_a_public_key() {
        let (rsa_private, _) = rsa_keys();
        let (ec_private, _) = ec_keys();
        for token in [
            sign(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
                &claims(),
            ),
            sign(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(ec_private.as_bytes()).unwrap(),
                &claims(),
            ),
        ] {
            let err = with_secret(b"k").verify(&token).unwrap_err();
            assert!(matches!(err, AuthError::Algorithm(_)), "{err:?}");
            assert!(err.to_string().contains("HS256"), "{err}");
        }
        // Other HMAC strengths are not configured either.
        let hs512 = sign(
            Algorithm::HS512,
            &EncodingKey::from_secret(b"k").unwrap(),
            &claims(),
        );
        assert!(matches!(
            with_secret(b"k").verify(&hs512),
            Err(AuthError::Algorithm(_))
        ));
    }

    #[test]
    fn missing_or_misshapen_claims_are_malformed() {
        let auth = with_secret(b"k");
        for (claim, why) in [("sub", "'sub' is missing"), ("exp", "'exp' is missing")] {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(claim);
            match auth.verify(&hs256(b"k", &c)) {
                Err(AuthError::Malformed(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("without {claim}: {other:?}"),
            }
        }
        for (claim, value) in [
            ("sub", json!(42)),
            ("exp", json!("tomorrow")),
            ("exp", json!(-5)),
            ("publish", json!("a")),
            ("admin", json!("yes")),
        ] {
            let mut c = claims();
            c[claim] = value;
            assert!(
                matches!(auth.verify(&hs256(b"k", &c)), Err(AuthError::Malformed(_))),
                "{claim}"
            );
        }
        for junk in ["", "abc", "a.b", "a.b.c.d", "!!.e30.x"] {
            assert!(
                matches!(auth.verify(junk), Err(AuthError::Malformed(_))),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn a_bad_pattern_in_a_claim_is_malformed_and_named() {
        let mut c = claims();
        c["subscribe"] = json!(["ok", "a.>.b"]);
        match with_secret(b"k").verify(&hs256(b"k", &c)) {
            Err(AuthError::Malformed(m)) => {
                assert!(m.contains("subscribe") && m.contains("a.>.b"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn optional_claims_default_to_nothing() {
        let c = json!({"sub": "x", "exp": now_secs() + 60, "extra": {"ignored": true}});
        let p = with_secret(b"k").verify(&hs256(b"k", &c)).unwrap();
        assert!(!p.may_publish("default") && !p.may_subscribe("default"));
        assert!(!p.is_admin() && !p.may_see("default"));
    }

    #[test]
    fn a_cached_token_is_the_same_principal_and_still_expires() {
        let auth = with_secret(b"k");
        let mut c = claims();
        let exp = now_secs() + 100;
        c["exp"] = json!(exp);
        let token = hs256(b"k", &c);
        let first = auth.verify(&token).unwrap();
        let second = auth.verify(&token).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let later = UNIX_EPOCH + Duration::from_secs(exp + 1);
        assert!(matches!(
            auth.verify_at(&token, later),
            Err(AuthError::Expired(_))
        ));
        let earlier = UNIX_EPOCH + Duration::from_secs(1);
        let mut c = claims();
        c["nbf"] = json!(now_secs() - 10);
        let token = hs256(b"k", &c);
        auth.verify(&token).unwrap();
        assert!(matches!(
            auth.verify_at(&token, earlier),
            Err(AuthError::NotYetValid(_))
        ));
    }

    #[test]
    fn the_cache_is_bounded() {
        let auth = with_secret(b"k");
        for i in 0..CACHE_CAPACITY + 10 {
            let mut c = claims();
            c["sub"] = json!(format!("user-{i}"));
            auth.verify(&hs256(b"k", &c)).unwrap();
            assert!(auth.cache.lock().len() <= CACHE_CAPACITY);
        }
    }

    #[test]
    fn the_bearer_header() {
        let auth = with_secret(b"k");
        let token = hs256(b"k", &claims());
        for value in [
            format!("Bearer {token}"),
            format!("bearer {token}"),
            format!("BEARER  {token} "),
        ] {
            assert_eq!(auth.from_header(Some(&value)).unwrap().subject(), "alice");
        }
        let err = auth.from_header(None).unwrap_err();
        assert_eq!(err, AuthError::Missing);
        assert_eq!(
            err.to_string(),
            "no bearer token: this server requires authorization: Bearer <JWT>"
        );
        for bad in [
            token.clone(),
            format!("Basic {token}"),
            "Bearer ".to_string(),
        ] {
            match auth.from_header(Some(&bad)) {
                Err(AuthError::Malformed(m)) => assert!(!m.contains(&token), "echoed: {m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_public_key_file_must_be_an_rsa_or_p256_public_key() {
        let (rsa_private, rsa_public) = rsa_keys();
        let (ec_private, ec_public) = ec_keys();
        let write = |text: &str| {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            file.write_all(text.as_bytes()).unwrap();
            file
        };
        let rsa = write(rsa_public);
        let auth = Authenticator::from_files(None, Some(rsa.path()))
            .unwrap()
            .unwrap();
        assert_eq!(auth.accepted(), "RS256");
        let ec = write(&ec_public);
        let auth = Authenticator::from_files(None, Some(ec.path()))
            .unwrap()
            .unwrap();
        assert_eq!(auth.accepted(), "ES256");
        assert!(format!("{auth:?}").contains("ES256"));
        for private in [rsa_private.as_str(), ec_private.as_str()] {
            let file = write(private);
            let err = Authenticator::from_files(None, Some(file.path())).unwrap_err();
            assert!(err.contains("private key"), "{err}");
        }
        let junk = write("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
        let err = Authenticator::from_files(None, Some(junk.path())).unwrap_err();
        assert!(err.contains("not an RSA or EC P-256 public key"), "{err}");
        assert!(err.contains(&junk.path().display().to_string()), "{err}");
    }

    #[test]
    fn times_are_printed_in_utc() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(utc(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(utc(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(utc(at(1_735_689_599)), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn any_configured_key_of_the_tokens_algorithm_verifies_it() {
        let (rsa_private, rsa_public) = rsa_keys();
        let (ec_private, ec_public) = ec_keys();
        let (ec2_private, ec2_public) = ec_keys();
        let publics =
            [rsa_public, &ec_public, &ec2_public].map(|pem| public_key(pem.as_bytes()).unwrap());
        let auth = Authenticator::new([&b"old"[..], &b"new"[..]], publics)
            .unwrap()
            .unwrap();
        assert_eq!(auth.accepted(), "HS256 and RS256 and ES256");
        let c = claims();
        let rsa = EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap();
        let ec = EncodingKey::from_ec_pem(ec_private.as_bytes()).unwrap();
        let ec2 = EncodingKey::from_ec_pem(ec2_private.as_bytes()).unwrap();
        for token in [
            hs256(b"old", &c),
            hs256(b"new", &c),
            sign(Algorithm::RS256, &rsa, &c),
            sign(Algorithm::ES256, &ec, &c),
            sign(Algorithm::ES256, &ec2, &c),
        ] {
            assert_eq!(auth.verify(&token).unwrap().subject(), "alice");
        }
        let (other_private, _) = ec_keys();
        let other = EncodingKey::from_ec_pem(other_private.as_bytes()).unwrap();
        for token in [hs256(b"neither", &c), sign(Algorithm::ES256, &other, &c)] {
            assert_eq!(auth.verify(&token).unwrap_err(), AuthError::BadSignature);
        }
    }

    #[test]
    fn a_required_issuer_and_audience_must_be_in_the_token() {
        let auth = with_secret(b"s").expecting(Expected {
            issuer: Some("https://id.example".into()),
            audience: Some("framecast".into()),
        });
        let with = |iss: Option<&str>, aud: Option<Value>| {
            let mut c = claims();
            if let Some(iss) = iss {
                c["iss"] = json!(iss);
            }
            if let Some(aud) = aud {
                c["aud"] = aud;
            }
            auth.verify(&hs256(b"s", &c))
        };
        let iss = Some("https://id.example");
        assert!(with(iss, Some(json!("framecast"))).is_ok());
        assert!(with(iss, Some(json!(["other", "framecast"]))).is_ok());
        for (i, a) in [
            (None, Some(json!("framecast"))),
            (Some("https://evil.example"), Some(json!("framecast"))),
            (iss, None),
            (iss, Some(json!("other"))),
            (iss, Some(json!(["other", "more"]))),
        ] {
            let e = with(i, a.clone()).unwrap_err();
            assert!(
                matches!(e, AuthError::NotForThisServer(_)),
                "{i:?} {a:?}: {e:?}"
            );
        }
        // A malformed `aud` is a malformed token.
        assert!(matches!(
            with(iss, Some(json!(7))).unwrap_err(),
            AuthError::Malformed(_)
        ));
        // Nothing required: `iss` and `aud` are ignored.
        let mut c = claims();
        c["iss"] = json!("anyone");
        c["aud"] = json!(["anything"]);
        assert!(with_secret(b"s").verify(&hs256(b"s", &c)).is_ok());
        // `mint_hs256` writes what the server requires.
        let mut minted = mint_claims();
        minted.expected = Expected {
            issuer: iss.map(String::from),
            audience: Some("framecast".into()),
        };
        assert!(auth.verify(&mint_hs256(b"s", &minted).unwrap()).is_ok());
        assert!(matches!(
            auth.verify(&mint_hs256(b"s", &mint_claims()).unwrap()),
            Err(AuthError::NotForThisServer(_))
        ));
    }
}
