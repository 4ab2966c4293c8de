//! Verifying Keycloak access tokens and session cookies, for the hub's `Verify` outputs.
//!
//! Tokens: RS256 only, verified with ring ([`jwt`]); the key is chosen by the token's `kid`
//! from a JWKS ([`keys`]), re-fetched on an unknown `kid` at most once per 10 s, one fetch at a
//! time. Verified tokens are remembered until they expire, so a reconnect with the same token
//! costs no RSA operation. Cookies: looked up in a [`SessionStore`], only from an allowed
//! `Origin`. Tokens are never logged; refusals are [`AuthFailure`] reasons.

pub mod dev;
pub mod jwt;
pub mod keys;

use crate::answer::Answer;
pub use dev::DevIssuer;
pub use jwt::{MAX_TOKEN_BYTES, Rules};
pub use keys::{KeySet, KeySource, Keys, RsaKey, parse_jwks};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use switchboard_core::server::{AuthFailure, Credentials, Principal};

/// Verified tokens remembered, so that a reconnecting client (or another tab) with the same
/// token does not cost another RSA verification.
pub const CACHE_CAPACITY: usize = 10_000;

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
    keys: KeySet,
    rules: Rules,
    allowed_origins: HashSet<String>,
    sessions: Arc<dyn SessionStore>,
    /// SHA-256 of a verified token → its principal, until the token expires. Bounded: cleared
    /// when full. A key removed from the JWKS stops new tokens at once; tokens it signed that
    /// were already verified live out their (short) lifetime. (Shared with the sessions the
    /// token opened: one copy of it, and the table's slots are 40 bytes, not 140.)
    verified: Mutex<HashMap<[u8; 32], Arc<Principal>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Verifier {
    /// A verifier of tokens signed by `keys` that pass `rules`, and of session cookies from
    /// `allowed_origins` found in `sessions`.
    pub fn new(
        keys: KeySet,
        rules: Rules,
        allowed_origins: Vec<String>,
        sessions: Arc<dyn SessionStore>,
    ) -> Self {
        Verifier {
            keys,
            rules,
            allowed_origins: allowed_origins.into_iter().collect(),
            sessions,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Checks credentials; `origin` is the upgrade request's `Origin` header. Answers at once
    /// unless the token names a key id not held (then after at most one fetch of the keys).
    pub fn verify(
        self: &Arc<Self>,
        credentials: Credentials,
        origin: Option<String>,
    ) -> Answer<Result<Arc<Principal>, AuthFailure>> {
        let token = match credentials {
            Credentials::Token(token) => token,
            Credentials::Cookie(cookie) => {
                return Answer::Now(self.verify_cookie(&cookie, origin).map(Arc::new));
            }
        };
        let digest: [u8; 32] =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
                .as_ref()
                .try_into()
                .unwrap_or([0; 32]);
        if let Some(remembered) = self.remembered(&digest) {
            return Answer::Now(remembered);
        }
        let kid = match jwt::split(&token) {
            Ok(unverified) => unverified.kid,
            Err(failure) => return Answer::Now(Err(failure)),
        };
        if self.keys.get(&kid).is_some() {
            return Answer::Now(self.verify_with_keys(&token, digest));
        }
        let verifier = self.clone();
        Answer::Later(Box::pin(async move {
            verifier.keys.refresh().await;
            verifier.verify_with_keys(&token, digest)
        }))
    }

    fn verify_cookie(
        &self,
        cookie: &str,
        origin: Option<String>,
    ) -> Result<Principal, AuthFailure> {
        // Browsers send cookies cross-site: an allowed Origin is what stops a hostile page from
        // riding the user's session (cross-site WebSocket hijacking).
        if !origin.is_some_and(|o| self.allowed_origins.contains(&o)) {
            return Err(AuthFailure::Origin);
        }
        self.sessions.lookup(cookie).ok_or(AuthFailure::UnknownSession)
    }

    /// A remembered verdict for the token with this digest, if any.
    fn remembered(&self, digest: &[u8; 32]) -> Option<Result<Arc<Principal>, AuthFailure>> {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let principal = verified.get(digest)?;
        let leeway = self.rules.leeway.as_millis() as i64;
        if principal.expires_at_unix_ms.is_some_and(|exp| exp + leeway >= now_ms()) {
            return Some(Ok(principal.clone()));
        }
        verified.remove(digest);
        Some(Err(AuthFailure::Expired))
    }

    fn verify_with_keys(
        &self,
        token: &str,
        digest: [u8; 32],
    ) -> Result<Arc<Principal>, AuthFailure> {
        let unverified = jwt::split(token)?;
        let key = self.keys.get(&unverified.kid).ok_or(AuthFailure::UnknownKey)?;
        let principal = Arc::new(unverified.verify(&key, &self.rules, now_ms())?);
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= CACHE_CAPACITY {
            verified.clear();
        }
        verified.insert(digest, principal.clone());
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(dev: &DevIssuer) -> Arc<Verifier> {
        let keys = HashMap::from([(dev.kid.clone(), dev.public_key())]);
        let rules = Rules {
            issuers: HashSet::from([dev.issuer.clone()]),
            audiences: HashSet::new(),
            azps: HashSet::new(),
            any_audience: true,
            leeway: std::time::Duration::from_secs(30),
            grants_claim: None,
        };
        Arc::new(Verifier::new(
            KeySet::new(keys, KeySource::Fixed),
            rules,
            vec![],
            Arc::new(MemorySessions::default()),
        ))
    }

    fn now<T>(answer: Answer<T>) -> T {
        match answer {
            Answer::Now(value) => value,
            Answer::Later(_) => panic!("expected an answer at once"),
        }
    }

    #[test]
    fn a_verified_token_is_remembered_and_a_tampered_one_is_not() {
        let dev = DevIssuer::generate("https://sso.test/realms/dev".into()).unwrap();
        let verifier = verifier(&dev);
        let token = dev.token("alice", 1).unwrap();
        let first = now(verifier.verify(Credentials::Token(token.clone()), None)).unwrap();
        assert_eq!(first.user_id, "alice");
        assert_eq!(first.display_name.as_deref(), Some("alice"));
        assert_eq!(verifier.verified.lock().unwrap().len(), 1);
        assert_eq!(now(verifier.verify(Credentials::Token(token.clone()), None)).unwrap(), first);
        let mut tampered = token;
        tampered.pop();
        assert!(now(verifier.verify(Credentials::Token(tampered), None)).is_err());
        assert_eq!(verifier.verified.lock().unwrap().len(), 1);
        // JWKS parsing keeps only RSA signing keys.
        let mut jwks = dev.jwks();
        jwks["keys"].as_array_mut().unwrap().extend([
            serde_json::json!({"kid": "enc", "kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"}),
            serde_json::json!({"kid": "ec", "kty": "EC"}),
        ]);
        let keys = parse_jwks(&jwks.to_string()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), [&dev.kid]);
        assert!(parse_jwks("nope").is_err());
    }

    #[test]
    fn the_dev_key_is_kept_and_read_back() {
        let dir =
            std::env::temp_dir().join(format!("switchboard-devkey-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("nested").join("dev-key.pem");
        let first = DevIssuer::load_or_create(&path, "i".into()).unwrap();
        let second = DevIssuer::load_or_create(&path, "i".into()).unwrap();
        assert_eq!(first.kid, second.kid);
        assert_eq!(first.public_key(), second.public_key());
        std::fs::write(&path, "garbage").unwrap();
        assert!(DevIssuer::load_or_create(&path, "i".into()).unwrap_err().contains("delete it"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
