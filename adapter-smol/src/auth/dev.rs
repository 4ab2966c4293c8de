//! Dev mode's identity provider: one RSA key, kept in a file so that tokens it printed keep
//! working across restarts, and Keycloak-shaped tokens signed with it (jwt-simple mints them).

use super::keys::RsaKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::prelude::*;
use std::path::{Path, PathBuf};

/// Dev mode's signing key and issuer.
pub struct DevIssuer {
    key_pair: RS256KeyPair,
    pub kid: String,
    pub issuer: String,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer").field("kid", &self.kid).field("issuer", &self.issuer).finish()
    }
}

/// Where dev mode keeps its key unless told otherwise: `$XDG_STATE_HOME/switchboard/`,
/// else `~/.local/state/switchboard/`, else the working directory.
pub fn default_key_path() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")));
    match state {
        Some(dir) => dir.join("switchboard").join("dev-key.pem"),
        None => PathBuf::from(".switchboard-dev-key.pem"),
    }
}

impl DevIssuer {
    /// A fresh 2048-bit key (not kept anywhere).
    pub fn generate(issuer: String) -> Result<Self, String> {
        let key_pair = RS256KeyPair::generate(2048).map_err(|e| e.to_string())?;
        Self::with_key(key_pair, issuer)
    }

    /// The key in the PEM file at `path`, created (readable by its owner only) if there is
    /// none.
    pub fn load_or_create(path: &Path, issuer: String) -> Result<Self, String> {
        let shown = path.display();
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                let key_pair = RS256KeyPair::from_pem(&pem).map_err(|e| {
                    format!("{shown}: not a dev key ({e}); delete it to have a new one made")
                })?;
                Self::with_key(key_pair, issuer)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key_pair = RS256KeyPair::generate(2048).map_err(|e| e.to_string())?;
                let pem = key_pair.to_pem().map_err(|e| e.to_string())?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                // Written whole under another name, then linked into place: a server starting
                // at the same moment reads a whole key, ours or its own, never half of one.
                let staged = path.with_extension(format!("pem.{}", std::process::id()));
                write_private(&staged, &pem).map_err(|e| format!("{}: {e}", staged.display()))?;
                let linked = std::fs::hard_link(&staged, path);
                let _ = std::fs::remove_file(&staged);
                match linked {
                    Ok(()) => Self::with_key(key_pair, issuer),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::load_or_create(path, issuer)
                    }
                    Err(e) => Err(format!("{shown}: {e}")),
                }
            }
            Err(error) => Err(format!("{shown}: {error}")),
        }
    }

    fn with_key(key_pair: RS256KeyPair, issuer: String) -> Result<Self, String> {
        let der = key_pair.public_key().to_der().map_err(|e| e.to_string())?;
        let kid = key_id(&der);
        let key_pair = key_pair.with_key_id(&kid);
        Ok(DevIssuer { key_pair, kid, issuer })
    }

    /// The public key, for the verifier.
    pub fn public_key(&self) -> RsaKey {
        let components = self.key_pair.public_key().to_components();
        RsaKey::from_components(&components.n, &components.e)
            .expect("jwt-simple makes valid RSA keys")
    }

    /// The JWKS that verifies this issuer's tokens, as Keycloak serves one.
    pub fn jwks(&self) -> serde_json::Value {
        let key = self.key_pair.public_key().to_components();
        serde_json::json!({ "keys": [{
            "kid": self.kid, "kty": "RSA", "alg": "RS256", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(&key.n), "e": URL_SAFE_NO_PAD.encode(&key.e),
        }]})
    }

    /// A Keycloak-shaped access token for `user`, valid for `hours`.
    pub fn token(&self, user: &str, hours: u64) -> Result<String, String> {
        #[derive(Serialize, Deserialize)]
        struct Keycloak {
            typ: String,
            azp: String,
            preferred_username: String,
        }
        let custom = Keycloak {
            typ: "Bearer".into(),
            azp: "switchboard-dev".into(),
            preferred_username: user.into(),
        };
        let claims = Claims::with_custom_claims(custom, Duration::from_hours(hours))
            .with_issuer(&self.issuer)
            .with_subject(user);
        self.key_pair.sign(claims).map_err(|e| e.to_string())
    }
}

/// Keycloak's key id: base64url(SHA-256(the key's SPKI DER)).
pub fn key_id(spki_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der))
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}
