//! Verifying Keycloak access tokens and session cookies, for the hub's `Verify` outputs.
//!
//! Tokens: RS256 only; the key is chosen by the token's `kid` from a JWKS (only `use: sig`,
//! `kty: RSA` keys); an unknown `kid` re-reads the JWKS at most once per 10 s. Checks: exact
//! issuer, `exp` required with 30 s of leeway, `typ: Bearer` (ID and refresh tokens fail),
//! audience or `azp` in the allow-lists, a size cap. Tokens are never logged: failures carry a
//! reason without the token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::prelude::*;
use serde::Deserialize;
use sha2::Digest;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use switchboard_core::server::{AuthFailure, Credentials, Principal};

/// The largest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// Verified tokens remembered, so that a reconnecting client (or another tab) with the same
/// token does not cost another RSA verification.
pub const CACHE_CAPACITY: usize = 10_000;

/// The least time between two reloads of the key set.
pub const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The claims switchboard reads beyond the registered ones.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeycloakClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm_access: Option<Roles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_access: Option<HashMap<String, Roles>>,
}

/// `{"roles": [...]}`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Roles {
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: Option<String>,
    kty: String,
    #[serde(rename = "use")]
    usage: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// The signing keys of a JWKS document, by key id. Encryption keys and non-RSA keys are
/// skipped.
pub fn parse_jwks(json: &str) -> Result<HashMap<String, RS256PublicKey>, String> {
    let set: JwkSet = serde_json::from_str(json).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in set.keys {
        let signing = jwk.usage.as_deref().is_none_or(|u| u == "sig");
        let rs256 = jwk.alg.as_deref().is_none_or(|a| a == "RS256");
        let (Some(kid), Some(n), Some(e)) = (jwk.kid, jwk.n, jwk.e) else { continue };
        if jwk.kty != "RSA" || !signing || !rs256 {
            continue;
        }
        let n = URL_SAFE_NO_PAD
            .decode(n.trim_end_matches('='))
            .map_err(|e| format!("key {kid}: n: {e}"))?;
        let e = URL_SAFE_NO_PAD
            .decode(e.trim_end_matches('='))
            .map_err(|e| format!("key {kid}: e: {e}"))?;
        let key = RS256PublicKey::from_components(&n, &e).map_err(|e| format!("key {kid}: {e}"))?;
        keys.insert(kid.clone(), key.with_key_id(&kid));
    }
    Ok(keys)
}

/// Keycloak's key id: base64url(SHA-256(the key's SPKI DER)).
pub fn key_id(key: &RS256PublicKey) -> Result<String, String> {
    let der = key.to_der().map_err(|e| e.to_string())?;
    Ok(URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der)))
}

/// A JWKS entry for `key`, as Keycloak serves it.
pub fn jwk_json(key: &RS256PublicKey, kid: &str) -> serde_json::Value {
    let components = key.to_components();
    serde_json::json!({
        "kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(components.n), "e": URL_SAFE_NO_PAD.encode(components.e),
    })
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A file, re-read on an unknown key id.
    File(PathBuf),
    /// A URL (Keycloak's `{issuer}/protocol/openid-connect/certs`), fetched again on an
    /// unknown key id.
    Url(String),
    /// Fixed keys (dev mode).
    Fixed,
}

impl KeySource {
    /// Reads the key set now.
    pub fn load(&self) -> Result<HashMap<String, RS256PublicKey>, String> {
        match self {
            KeySource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                parse_jwks(&text)
            }
            KeySource::Url(url) => {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(std::time::Duration::from_secs(5)))
                    .build()
                    .into();
                let text = agent
                    .get(url)
                    .call()
                    .map_err(|e| format!("{url}: {e}"))?
                    .body_mut()
                    .with_config()
                    .limit(1 << 20)
                    .read_to_string()
                    .map_err(|e| format!("{url}: {e}"))?;
                parse_jwks(&text)
            }
            KeySource::Fixed => Ok(HashMap::new()),
        }
    }
}

/// Maps session cookies to principals.
pub trait SessionStore: Send + Sync {
    fn lookup(&self, cookie: &str) -> Option<Principal>;
}

/// Sessions kept in memory.
#[derive(Default)]
pub struct MemorySessions(RwLock<HashMap<String, Principal>>);

impl MemorySessions {
    /// Starts a session.
    pub fn insert(&self, cookie: impl Into<String>, principal: Principal) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(cookie.into(), principal);
    }
}

impl std::fmt::Debug for MemorySessions {
    /// Cookies are credentials: only their number is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.0.read().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("MemorySessions").field("sessions", &count).finish()
    }
}

impl SessionStore for MemorySessions {
    fn lookup(&self, cookie: &str) -> Option<Principal> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(cookie).cloned()
    }
}

/// The token and cookie checks.
pub struct Verifier {
    keys: RwLock<HashMap<String, RS256PublicKey>>,
    source: KeySource,
    last_reload: Mutex<Option<Instant>>,
    issuers: HashSet<String>,
    audiences: HashSet<String>,
    azps: HashSet<String>,
    allowed_origins: HashSet<String>,
    sessions: Box<dyn SessionStore>,
    /// SHA-256 of a verified token → its principal, until the token expires. Bounded: cleared
    /// when full. A key removed from the JWKS stops new tokens at once; tokens it signed that
    /// were already verified live out their (short) lifetime.
    /// (Boxed: the table keeps spare slots, and a slot is then 40 bytes, not 120.)
    verified: Mutex<HashMap<[u8; 32], Box<Principal>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("source", &self.source)
            .field("issuers", &self.issuers)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier with these keys and allow-lists.
    pub fn new(
        keys: HashMap<String, RS256PublicKey>,
        source: KeySource,
        issuers: Vec<String>,
        audiences: Vec<String>,
        azps: Vec<String>,
        allowed_origins: Vec<String>,
        sessions: Box<dyn SessionStore>,
    ) -> Self {
        Verifier {
            keys: RwLock::new(keys),
            source,
            last_reload: Mutex::new(None),
            issuers: issuers.into_iter().collect(),
            audiences: audiences.into_iter().collect(),
            azps: azps.into_iter().collect(),
            allowed_origins: allowed_origins.into_iter().collect(),
            sessions,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Checks credentials; `origin` is the upgrade request's `Origin` header.
    pub fn verify(
        &self,
        credentials: &Credentials,
        origin: Option<&str>,
    ) -> Result<Principal, AuthFailure> {
        match credentials {
            Credentials::Token(token) => self.verify_token(token),
            Credentials::Cookie(cookie) => {
                // Browsers send cookies cross-site: an allowed Origin is what stops a hostile
                // page from riding the user's session (cross-site WebSocket hijacking).
                if !origin.is_some_and(|o| self.allowed_origins.contains(o)) {
                    return Err(AuthFailure::Invalid(
                        "origin not allowed for cookie authentication".into(),
                    ));
                }
                self.sessions
                    .lookup(cookie)
                    .ok_or_else(|| AuthFailure::Invalid("unknown session".into()))
            }
        }
    }

    fn verify_token(&self, token: &str) -> Result<Principal, AuthFailure> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthFailure::Invalid("token too large".into()));
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .map(|boxed| Principal::clone(boxed));
        if let Some(principal) = cached {
            if principal
                .expires_at_unix_ms
                .is_some_and(|exp| exp + (LEEWAY_SECS as i64) * 1000 >= now_ms)
            {
                return Ok(principal);
            }
            self.verified.lock().unwrap_or_else(|e| e.into_inner()).remove(&digest);
            return Err(AuthFailure::Expired);
        }
        let principal = self.verify_uncached(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= CACHE_CAPACITY {
            verified.clear();
        }
        verified.insert(digest, Box::new(principal.clone()));
        Ok(principal)
    }

    fn verify_uncached(&self, token: &str) -> Result<Principal, AuthFailure> {
        let invalid = |reason: &str| AuthFailure::Invalid(reason.to_owned());
        let metadata = Token::decode_metadata(token).map_err(|_| invalid("malformed token"))?;
        if metadata.algorithm() != "RS256" {
            return Err(invalid("algorithm not allowed"));
        }
        if let Some(typ) = metadata.signature_type() {
            if !typ.eq_ignore_ascii_case("JWT") && !typ.eq_ignore_ascii_case("at+jwt") {
                return Err(invalid("token type not allowed"));
            }
        }
        let kid = metadata.key_id().ok_or_else(|| invalid("no key id"))?.to_owned();
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                self.reload();
                self.key(&kid).ok_or_else(|| invalid("unknown key id"))?
            }
        };
        // Signature and issuer here; time is checked below with our own leeway, so that an
        // expired token is told apart (the client refreshes) from a bad one.
        let options = VerificationOptions {
            allowed_issuers: (!self.issuers.is_empty()).then(|| self.issuers.clone()),
            required_key_id: Some(kid),
            // Ten years (coarsetime overflows past about 130): tokens older than that fail as
            // invalid rather than expired, which is fine.
            time_tolerance: Some(Duration::from_days(3650)),
            max_token_length: Some(MAX_TOKEN_BYTES),
            ..Default::default()
        };
        let claims = key
            .verify_token::<KeycloakClaims>(token, Some(options))
            .map_err(|e| AuthFailure::Invalid(format!("verification failed: {e}")))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let exp = claims.expires_at.ok_or_else(|| invalid("no expiry"))?.as_secs();
        if exp + LEEWAY_SECS < now {
            return Err(AuthFailure::Expired);
        }
        if claims.invalid_before.is_some_and(|nbf| nbf.as_secs() > now + LEEWAY_SECS) {
            return Err(invalid("not yet valid"));
        }
        if claims.custom.typ.as_deref() != Some("Bearer") {
            return Err(invalid("not an access token"));
        }
        if !self.audiences.is_empty() || !self.azps.is_empty() {
            let audience_ok = claims.audiences.as_ref().is_some_and(|a| match a {
                Audiences::AsString(one) => self.audiences.contains(one),
                Audiences::AsSet(set) => set.iter().any(|a| self.audiences.contains(a)),
            });
            let azp_ok = claims.custom.azp.as_ref().is_some_and(|azp| self.azps.contains(azp));
            if !audience_ok && !azp_ok {
                return Err(invalid("audience not allowed"));
            }
        }
        let user_id = claims.subject.ok_or_else(|| invalid("no subject"))?;
        let mut roles: Vec<String> =
            claims.custom.realm_access.map(|r| r.roles).unwrap_or_default();
        for (client, access) in claims.custom.resource_access.unwrap_or_default() {
            roles.extend(access.roles.into_iter().map(|role| format!("{client}:{role}")));
        }
        Ok(Principal {
            user_id,
            display_name: claims.custom.preferred_username,
            roles,
            expires_at_unix_ms: Some(exp as i64 * 1000),
        })
    }

    fn key(&self, kid: &str) -> Option<RS256PublicKey> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).get(kid).cloned()
    }

    /// Re-reads the key set, at most once per [`RELOAD_INTERVAL`]; keeps the old keys when the
    /// source fails.
    fn reload(&self) {
        if matches!(self.source, KeySource::Fixed) {
            return;
        }
        // Held during the fetch: one reload at a time (single flight); whoever waited finds
        // it done and the interval not yet passed.
        let mut last = self.last_reload.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < RELOAD_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        match self.source.load() {
            Ok(keys) if !keys.is_empty() => {
                tracing::info!(keys = keys.len(), "reloaded the signing keys");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
            }
            Ok(_) => tracing::warn!("the key set has no signing keys; keeping the old ones"),
            Err(error) => {
                tracing::warn!(%error, "could not reload the signing keys; keeping the old ones")
            }
        }
    }
}

/// Dev mode's identity provider: a key generated at start-up and tokens signed with it.
pub struct DevIssuer {
    pub key_pair: RS256KeyPair,
    pub kid: String,
    pub issuer: String,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer").field("kid", &self.kid).field("issuer", &self.issuer).finish()
    }
}

impl DevIssuer {
    /// Generates a 2048-bit key.
    pub fn generate(issuer: String) -> Result<Self, String> {
        let key_pair = RS256KeyPair::generate(2048).map_err(|e| e.to_string())?;
        let kid = key_id(&key_pair.public_key())?;
        let key_pair = key_pair.with_key_id(&kid);
        Ok(DevIssuer { key_pair, kid, issuer })
    }

    /// The JWKS that verifies this issuer's tokens.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [jwk_json(&self.key_pair.public_key(), &self.kid)] })
    }

    /// A Keycloak-shaped access token for `user`, valid for `hours`.
    pub fn token(&self, user: &str, hours: u64) -> Result<String, String> {
        let custom = KeycloakClaims {
            typ: Some("Bearer".into()),
            azp: Some("switchboard-dev".into()),
            preferred_username: Some(user.into()),
            ..Default::default()
        };
        let claims = Claims::with_custom_claims(custom, Duration::from_hours(hours))
            .with_issuer(&self.issuer)
            .with_subject(user);
        self.key_pair.sign(claims).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(dev: &DevIssuer) -> Verifier {
        let keys =
            HashMap::from([(dev.kid.clone(), dev.key_pair.public_key().with_key_id(&dev.kid))]);
        Verifier::new(
            keys,
            KeySource::Fixed,
            vec![dev.issuer.clone()],
            vec![],
            vec![],
            vec![],
            Box::new(MemorySessions::default()),
        )
    }

    #[test]
    fn a_verified_token_is_remembered_and_a_tampered_one_is_not() {
        let dev = DevIssuer::generate("https://sso.test/realms/dev".into()).unwrap();
        let verifier = verifier(&dev);
        let token = dev.token("alice", 1).unwrap();
        let first = verifier.verify(&Credentials::Token(token.clone()), None).unwrap();
        assert_eq!(first.user_id, "alice");
        assert_eq!(first.display_name.as_deref(), Some("alice"));
        assert_eq!(verifier.verified.lock().unwrap().len(), 1);
        assert_eq!(verifier.verify(&Credentials::Token(token.clone()), None).unwrap(), first);
        let mut tampered = token;
        tampered.pop();
        assert!(matches!(
            verifier.verify(&Credentials::Token(tampered), None),
            Err(AuthFailure::Invalid(_))
        ));
        assert_eq!(verifier.verified.lock().unwrap().len(), 1);
        // JWKS parsing keeps only RSA signing keys.
        let jwks = serde_json::json!({"keys": [jwk_json(&dev.key_pair.public_key(), "k1"), {"kid": "enc", "kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"}, {"kid": "ec", "kty": "EC"}]});
        let keys = parse_jwks(&jwks.to_string()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["k1"]);
        assert!(parse_jwks("nope").is_err());
    }
}
