//! Keycloak access tokens: a JWT signed RS256, read and checked by hand (the format is small;
//! the checks are ours to get right), with the signature verified by aws-lc-rs.
//!
//! In order: size; three base64url parts; the header (`alg` RS256 only, `typ` absent, `JWT` or
//! `at+jwt`, no `crit`, a `kid`); the key by `kid`; the signature; then the claims: issuer,
//! `exp` (required) and `nbf` with the leeway, `typ: Bearer` (ID and refresh tokens fail),
//! audience or `azp`, `sub`. Every refusal is an [`AuthFailure`] reason, never text from the
//! token.

use super::keys::RsaKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use switchboard_core::server::{AuthFailure, Principal};

/// The largest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A token split into its parts, header read, nothing verified yet.
#[derive(Debug)]
pub struct Unverified<'a> {
    /// `header.payload`: what the signature covers.
    signed: &'a str,
    payload: &'a str,
    signature: &'a str,
    pub kid: String,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// Splits `token` and checks its header.
pub fn split(token: &str) -> Result<Unverified<'_>, AuthFailure> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthFailure::Malformed);
    }
    let (signed, signature) = token.rsplit_once('.').ok_or(AuthFailure::Malformed)?;
    let (header, payload) = signed.split_once('.').ok_or(AuthFailure::Malformed)?;
    if payload.contains('.') || signature.is_empty() {
        return Err(AuthFailure::Malformed);
    }
    let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| AuthFailure::Malformed)?;
    let header: Header = serde_json::from_slice(&header).map_err(|_| AuthFailure::Malformed)?;
    if header.alg != "RS256" || header.crit.is_some() {
        return Err(AuthFailure::Algorithm);
    }
    if let Some(typ) = &header.typ {
        if !typ.eq_ignore_ascii_case("JWT") && !typ.eq_ignore_ascii_case("at+jwt") {
            return Err(AuthFailure::Algorithm);
        }
    }
    let kid = header.kid.filter(|k| !k.is_empty()).ok_or(AuthFailure::UnknownKey)?;
    Ok(Unverified { signed, payload, signature, kid })
}

/// What the claims must satisfy.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Accepted issuers, exactly. None accepted when empty.
    pub issuers: HashSet<String>,
    pub audiences: HashSet<String>,
    pub azps: HashSet<String>,
    /// Accept any audience (when the issuer serves only this application).
    pub any_audience: bool,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// The claim whose string values are copied into [`Principal::grants`].
    pub grants_claim: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct Roles {
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<f64>,
    nbf: Option<f64>,
    typ: Option<String>,
    azp: Option<String>,
    preferred_username: Option<String>,
    #[serde(default)]
    realm_access: Roles,
    #[serde(default)]
    resource_access: HashMap<String, Roles>,
}

impl Unverified<'_> {
    /// Verifies the signature with `key`, then the claims by `rules` at `now_ms` (wall clock).
    pub fn verify(
        &self,
        key: &RsaKey,
        rules: &Rules,
        now_ms: i64,
    ) -> Result<Principal, AuthFailure> {
        let signature =
            URL_SAFE_NO_PAD.decode(self.signature).map_err(|_| AuthFailure::Malformed)?;
        if !key.verifies(self.signed.as_bytes(), &signature) {
            return Err(AuthFailure::Signature);
        }
        let payload = URL_SAFE_NO_PAD.decode(self.payload).map_err(|_| AuthFailure::Malformed)?;
        let claims: Claims =
            serde_json::from_slice(&payload).map_err(|_| AuthFailure::Malformed)?;
        if !claims.iss.as_ref().is_some_and(|iss| rules.issuers.contains(iss)) {
            return Err(AuthFailure::Issuer);
        }
        let leeway_ms = rules.leeway.as_millis() as f64;
        let exp_ms =
            claims.exp.filter(|e| e.is_finite()).ok_or(AuthFailure::NotAccessToken)? * 1000.0;
        if exp_ms + leeway_ms < now_ms as f64 {
            return Err(AuthFailure::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf * 1000.0 > now_ms as f64 + leeway_ms) {
            return Err(AuthFailure::NotYetValid);
        }
        if claims.typ.as_deref() != Some("Bearer") {
            return Err(AuthFailure::NotAccessToken);
        }
        if !rules.any_audience {
            let audience = match &claims.aud {
                Some(Audience::One(one)) => rules.audiences.contains(one),
                Some(Audience::Many(all)) => all.iter().any(|a| rules.audiences.contains(a)),
                None => false,
            };
            let azp = claims.azp.as_ref().is_some_and(|azp| rules.azps.contains(azp));
            if !audience && !azp {
                return Err(AuthFailure::Audience);
            }
        }
        let user_id = claims.sub.filter(|s| !s.is_empty()).ok_or(AuthFailure::NotAccessToken)?;
        let mut roles = claims.realm_access.roles;
        for (client, access) in claims.resource_access {
            roles.extend(access.roles.into_iter().map(|role| format!("{client}:{role}")));
        }
        let grants = match &rules.grants_claim {
            Some(name) => grants(&payload, name),
            None => Vec::new(),
        };
        Ok(Principal {
            user_id,
            display_name: claims.preferred_username,
            roles,
            grants,
            expires_at_unix_ms: Some(exp_ms as i64),
        })
    }
}

/// The string values of claim `name` (a string or an array of strings; anything else: none).
fn grants(payload: &[u8], name: &str) -> Vec<String> {
    let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice(payload) else {
        return Vec::new();
    };
    match claims.get(name) {
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        Some(serde_json::Value::Array(all)) => {
            all.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        }
        _ => Vec::new(),
    }
}
