//! Who may join which conversation: the hub asks ([`JoinRequest`]), an [`Authorizer`]
//! answers. Three come with the server, and a library user plugs its own:
//!
//! - [`AllowAll`]: everyone everywhere, writing. Dev mode's, or `--authorize allow-all`.
//! - [`ClaimRule`]: the token itself says: the conversation is in the claim named by
//!   `--authorize-claim` (or the claim holds `*`), or the principal has a role named by
//!   `--authorize-role`.
//! - [`Callback`]: the backend decides (`--authorize-url`): `POST {userId, conversationId,
//!   definitionId}` → `{allow, write, reason}`. Bounded concurrency, a timeout, fail closed
//!   (an error or a timeout refuses with "try again later"), a short cache of answers by user
//!   and conversation, and one request in flight per user and conversation however many
//!   sockets ask at once.

use crate::answer::Answer;
use futures_util::FutureExt;
use futures_util::future::{LocalBoxFuture, Shared};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use switchboard_core::server::{JoinGrant, JoinRefusal, JoinRequest};

/// A join decision.
pub type Verdict = Result<JoinGrant, JoinRefusal>;

/// Decides joins. Called on the server's event loop: answer at once when you can, or with a
/// future (which must end: the hub refuses a join not answered within its auth timeout).
pub trait Authorizer {
    fn authorize(&self, request: &JoinRequest) -> Answer<Verdict>;
}

/// Everyone may join and write everywhere.
#[derive(Debug, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _: &JoinRequest) -> Answer<Verdict> {
        Answer::Now(Ok(JoinGrant { write: true }))
    }
}

/// The token decides: its grants claim holds the conversation (or `*`), or the principal has
/// one of the roles. Members so admitted may write.
#[derive(Debug, Default)]
pub struct ClaimRule {
    pub roles: Vec<String>,
}

impl Authorizer for ClaimRule {
    fn authorize(&self, request: &JoinRequest) -> Answer<Verdict> {
        let principal = &request.principal;
        let conversation = request.conversation_id.as_str();
        let granted = principal.grants.iter().any(|g| g == conversation || g == "*")
            || principal.roles.iter().any(|r| self.roles.contains(r));
        Answer::Now(if granted {
            Ok(JoinGrant { write: true })
        } else {
            Err(JoinRefusal::Forbidden)
        })
    }
}

/// How the backend callback behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackConfig {
    pub url: String,
    /// One request's limit; beyond it the join is refused as unavailable (2 s).
    pub timeout: Duration,
    /// How long an answer is reused for the same user and conversation (10 s).
    pub cache_ttl: Duration,
    /// Requests to the backend at once (32); more wait their turn.
    pub concurrency: usize,
}

/// The backend decides, over HTTP.
#[derive(Clone)]
pub struct Callback(Rc<CallbackState>);

/// A user and a conversation: what an answer is about.
type JoinKey = (String, String);

/// A request to the backend that several joins wait for.
type Asking = Shared<LocalBoxFuture<'static, Verdict>>;

struct CallbackState {
    config: CallbackConfig,
    permits: smol::lock::Semaphore,
    cache: RefCell<HashMap<JoinKey, (Instant, Verdict)>>,
    in_flight: RefCell<HashMap<JoinKey, Asking>>,
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback").field("url", &self.0.config.url).finish_non_exhaustive()
    }
}

/// Answers remembered at most (then the cache starts over).
const CACHE_CAPACITY: usize = 10_000;

#[derive(Deserialize)]
struct BackendAnswer {
    allow: bool,
    #[serde(default)]
    write: bool,
    #[serde(default)]
    reason: Option<String>,
}

impl Callback {
    pub fn new(config: CallbackConfig) -> Self {
        let permits = smol::lock::Semaphore::new(config.concurrency.max(1));
        Callback(Rc::new(CallbackState {
            config,
            permits,
            cache: RefCell::default(),
            in_flight: RefCell::default(),
        }))
    }

    async fn ask(
        state: Rc<CallbackState>,
        key: (String, String),
        definition: Option<String>,
    ) -> Verdict {
        let verdict = {
            let _permit = state.permits.acquire().await;
            let (url, timeout) = (state.config.url.clone(), state.config.timeout);
            let body = serde_json::json!({
                "userId": key.0, "conversationId": key.1, "definitionId": definition,
            });
            smol::unblock(move || post(&url, timeout, &body)).await
        };
        state.in_flight.borrow_mut().remove(&key);
        // "Try again later" is not remembered: the next join asks again.
        if verdict != Err(JoinRefusal::Unavailable) {
            let mut cache = state.cache.borrow_mut();
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), verdict));
        }
        verdict
    }
}

/// One request to the backend, failing closed.
fn post(url: &str, timeout: Duration, body: &serde_json::Value) -> Verdict {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let response =
        agent.post(url).header("Content-Type", "application/json").send(body.to_string());
    let mut response = match response {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => {
            tracing::warn!(
                status = response.status().as_u16(),
                "the authorizer answered with an error; refusing the join"
            );
            return Err(JoinRefusal::Unavailable);
        }
        Err(error) => {
            tracing::warn!(%error, "the authorizer could not be asked; refusing the join");
            return Err(JoinRefusal::Unavailable);
        }
    };
    let text = match response.body_mut().with_config().limit(64 * 1024).read_to_string() {
        Ok(text) => text,
        Err(error) => {
            tracing::warn!(%error, "the authorizer's answer could not be read; refusing the join");
            return Err(JoinRefusal::Unavailable);
        }
    };
    match serde_json::from_str::<BackendAnswer>(&text) {
        Ok(answer) if answer.allow => Ok(JoinGrant { write: answer.write }),
        Ok(answer) => match answer.reason.as_deref() {
            Some("conversation_not_found" | "not_found") => Err(JoinRefusal::NotFound),
            _ => Err(JoinRefusal::Forbidden),
        },
        Err(error) => {
            tracing::warn!(%error, "the authorizer's answer is not {{allow, write, reason}}; refusing the join");
            Err(JoinRefusal::Unavailable)
        }
    }
}

impl Authorizer for Callback {
    fn authorize(&self, request: &JoinRequest) -> Answer<Verdict> {
        let key = (request.principal.user_id.clone(), request.conversation_id.to_string());
        let state = &self.0;
        if let Some((at, verdict)) = state.cache.borrow().get(&key) {
            if at.elapsed() < state.config.cache_ttl {
                return Answer::Now(*verdict);
            }
        }
        let shared = state.in_flight.borrow().get(&key).cloned();
        let shared = shared.unwrap_or_else(|| {
            let ask = Self::ask(state.clone(), key.clone(), request.definition_id.clone());
            let shared = ask.boxed_local().shared();
            state.in_flight.borrow_mut().insert(key, shared.clone());
            shared
        });
        Answer::Later(Box::pin(shared))
    }
}
