//! Signing keys: a JWKS document parsed into RSA public keys by key id, and the key set the
//! verifier reads, re-fetched on an unknown key id by one fetch at a time, with no lock held
//! while it runs.

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The least time between two fetches of the key set: an attacker's tokens naming invented key
/// ids cost at most one fetch per interval.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// How long one fetch of a JWKS URL may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// An RS256 verification key, parsed once, when the key set is read.
///
/// Parsing a key computes its Montgomery constants (R² mod n among them). ring cannot keep a
/// parsed key, so every connect redid that work; aws-lc-rs keeps it, and a connect pays for
/// the exponentiation alone (about a quarter less per verification). Cloning shares the key.
#[derive(Clone)]
pub struct RsaKey(Arc<ParsedPublicKey>);

impl RsaKey {
    /// The key with this big-endian modulus and exponent (a JWK's `n` and `e`). The modulus's
    /// size (2 048 to 8 192 bits) is checked at each verification.
    pub fn from_components(n: &[u8], e: &[u8]) -> Result<Self, String> {
        RsaPublicKeyComponents { n, e }
            .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
            .map(|key| RsaKey(Arc::new(key)))
            .map_err(|rejected| format!("not an RSA public key: {rejected}"))
    }

    /// Whether `signature` is this key's RS256 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.0.verify_sig(message, signature).is_ok()
    }
}

/// Equal keys have the same SubjectPublicKeyInfo.
impl PartialEq for RsaKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_ref().as_ref() == other.0.as_ref().as_ref()
    }
}

impl Eq for RsaKey {}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaKey")
    }
}

/// Keys by key id.
pub type Keys = HashMap<String, RsaKey>;

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
pub fn parse_jwks(json: &str) -> Result<Keys, String> {
    let set: JwkSet = serde_json::from_str(json).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in set.keys {
        let signing = jwk.usage.as_deref().is_none_or(|u| u == "sig");
        let rs256 = jwk.alg.as_deref().is_none_or(|a| a == "RS256");
        let (Some(kid), Some(n), Some(e)) = (jwk.kid, jwk.n, jwk.e) else { continue };
        if jwk.kty != "RSA" || !signing || !rs256 {
            continue;
        }
        let decode = |what: &str, text: &str| {
            URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|error| format!("key {kid}: {what}: {error}"))
        };
        let key = RsaKey::from_components(&decode("n", &n)?, &decode("e", &e)?)
            .map_err(|error| format!("key {kid}: {error}"))?;
        keys.insert(kid.clone(), key);
    }
    Ok(keys)
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
    /// Reads the key set now (blocking: call it off the event loop).
    pub fn load(&self) -> Result<Keys, String> {
        match self {
            KeySource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                parse_jwks(&text)
            }
            KeySource::Url(url) => {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(FETCH_TIMEOUT))
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

type Fetch = Shared<BoxFuture<'static, Result<Arc<Keys>, String>>>;

/// The keys the verifier holds, and how they are refreshed.
///
/// Lookups read a snapshot. A token naming a key id not held asks for a refresh: the first
/// such request in [`RELOAD_INTERVAL`] starts one fetch (on the blocking pool, with
/// [`FETCH_TIMEOUT`]); every request meanwhile waits for that same fetch (single flight, no
/// thread parked, no lock held across it); requests after it, within the interval, get no
/// fetch at all. When a fetch fails or finds no signing keys, the keys held keep serving.
#[derive(Debug)]
pub struct KeySet {
    keys: RwLock<Arc<Keys>>,
    source: KeySource,
    refresh: Mutex<Refresh>,
}

#[derive(Default)]
struct Refresh {
    last_started: Option<Instant>,
    in_flight: Option<Fetch>,
}

impl std::fmt::Debug for Refresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresh").field("in_flight", &self.in_flight.is_some()).finish()
    }
}

impl KeySet {
    /// A key set holding `keys`, refreshed from `source`.
    pub fn new(keys: Keys, source: KeySource) -> Self {
        KeySet { keys: RwLock::new(Arc::new(keys)), source, refresh: Mutex::default() }
    }

    /// The key with this id, if held.
    pub fn get(&self, kid: &str) -> Option<RsaKey> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).get(kid).cloned()
    }

    /// Refreshes the keys if allowed now (see the type's docs) and waits for the outcome.
    pub async fn refresh(&self) {
        let fetch = {
            let mut state = self.refresh.lock().unwrap_or_else(|e| e.into_inner());
            match &state.in_flight {
                Some(fetch) => fetch.clone(),
                None if matches!(self.source, KeySource::Fixed) => return,
                None if state.last_started.is_some_and(|at| at.elapsed() < RELOAD_INTERVAL) => {
                    return;
                }
                None => {
                    let source = self.source.clone();
                    let fetch =
                        async move { smol::unblock(move || source.load()).await.map(Arc::new) }
                            .boxed()
                            .shared();
                    state.last_started = Some(Instant::now());
                    state.in_flight = Some(fetch.clone());
                    fetch
                }
            }
        };
        let outcome = fetch.await;
        let mut state = self.refresh.lock().unwrap_or_else(|e| e.into_inner());
        if state.in_flight.take().is_none() {
            return; // Another waiter installed the outcome.
        }
        match outcome {
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

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_simple::prelude::{Claims, RS256KeyPair, RSAKeyPairLike};

    fn signed_by(key_pair: &RS256KeyPair) -> (RsaKey, String, Vec<u8>) {
        let components = key_pair.public_key().to_components();
        let key = RsaKey::from_components(&components.n, &components.e).unwrap();
        let token =
            key_pair.sign(Claims::create(jwt_simple::prelude::Duration::from_mins(5))).unwrap();
        let (signed, signature) = token.rsplit_once('.').unwrap();
        (key, signed.to_owned(), URL_SAFE_NO_PAD.decode(signature).unwrap())
    }

    #[test]
    fn a_kept_key_verifies_its_signatures_and_nothing_else() {
        let (key, signed, signature) = signed_by(&RS256KeyPair::generate(2048).unwrap());
        assert!(key.verifies(signed.as_bytes(), &signature));
        assert!(key.verifies(signed.as_bytes(), &signature), "the kept key verifies again");
        assert!(!key.verifies(format!("{signed}x").as_bytes(), &signature));
        let mut forged = signature.clone();
        forged[10] ^= 1;
        assert!(!key.verifies(signed.as_bytes(), &forged));
        let (other, _, _) = signed_by(&RS256KeyPair::generate(2048).unwrap());
        assert!(!other.verifies(signed.as_bytes(), &signature));
        assert_ne!(key, other);
        assert_eq!(key, key.clone());
    }

    #[test]
    fn a_signing_key_that_is_no_rsa_key_is_refused_by_name() {
        let jwks =
            r#"{"keys": [{"kid": "bad", "kty": "RSA", "use": "sig", "n": "", "e": "AQAB"}]}"#;
        let error = parse_jwks(jwks).unwrap_err();
        assert!(error.starts_with("key bad: "), "{error}");
    }
}
