//! The HTTP side of the port: the WebSocket upgrade, health, readiness, metrics, the publish
//! API, and (dev mode) the JWKS.

use crate::admission::{Admission, FromIp, Pending};
use crate::driver::{Command, Stream, Write};
use crate::metrics::{BusStats, Metrics};
use crate::reader::Reader;
use crate::socket;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use smol_hyper::rt::{FuturesIo, SmolTimer};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;
use switchboard_core::protocol::{Id, MessageType, Payload};
use switchboard_core::server::{
    HubStats, OpenRequest, Outgoing, RateLimit, RefusedSend, SocketId, Target,
};

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The public port: the WebSocket endpoint, health, readiness, metrics, and the publish API
    /// unless it has a listener of its own.
    Public { api: bool },
    /// `--api-listen`: the publish API, health, readiness and metrics.
    Api,
}

/// What every HTTP connection shares.
#[derive(Debug)]
pub struct App {
    pub path: String,
    /// This thread's hub.
    pub commands: async_channel::Sender<Command>,
    /// Every thread's hub (this one's included), for counts over all of them.
    pub hubs: Arc<[async_channel::Sender<Command>]>,
    /// Where sockets' writers report what they wrote.
    pub written: async_channel::Sender<switchboard_core::server::Input>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub next_socket: AtomicU64,
    pub ws_config: Rc<WebSocketConfig>,
    pub api_key: Option<String>,
    /// Shared by every thread's hub, as are the caps.
    pub api_bucket: Arc<ApiBucket>,
    pub admission: Arc<Admission>,
    pub dev_jwks: Option<String>,
    /// Served under `/app/`.
    pub static_dir: Option<std::path::PathBuf>,
    /// The links to the bus, one per shard and hub, hub after hub, when the hubs share one
    /// (`/healthz` tells when one is down).
    pub buses: Arc<[Arc<crate::redis::Status>]>,
    /// Shards of the bus.
    pub shards: usize,
    /// `--test-hooks`: `POST /debug/bus/deaf`.
    pub test_hooks: bool,
}

/// The publish API's own rate limit: one token bucket over every caller.
#[derive(Debug)]
pub struct ApiBucket {
    limit: RateLimit,
    state: std::sync::Mutex<(f64, Instant)>,
}

impl ApiBucket {
    pub fn new(limit: RateLimit) -> Self {
        let full = (f64::from(limit.capacity), Instant::now());
        ApiBucket { limit, state: std::sync::Mutex::new(full) }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&self) -> Result<(), std::time::Duration> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, at) = *state;
        let now = Instant::now();
        let capacity = f64::from(self.limit.capacity);
        let rate = capacity / self.limit.per.as_secs_f64().max(1e-9);
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * rate).min(capacity);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(std::time::Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = text(status, value.to_string());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A TCP connection the listener admitted: counted as `pending` until its HTTP phase ends, and
/// against its address (`from_ip`) until the socket closes, upgraded or not.
pub struct Accepted {
    pub stream: Stream,
    pub peer: SocketAddr,
    pub listener: Listener,
    pub pending: Pending,
    pub from_ip: Option<FromIp>,
}

/// Serves one admitted TCP connection (HTTP/1.1, with upgrades).
///
/// The WebSocket runs on this same task once hyper has let go of the connection: one task per
/// socket. What a task's future holds, every socket carries for its whole life, and an async
/// function keeps its arguments for as long as it runs: so the HTTP phase is a future of its
/// own, boxed, and it and everything it was given (hyper's buffers, the request, the accepted
/// stream) are gone once the socket runs.
pub fn serve(accepted: Accepted, app: Rc<App>) -> impl Future<Output = ()> {
    use futures_util::FutureExt;
    let peer = accepted.peer;
    let http = Box::pin(serve_http(accepted, app.clone()));
    http.then(move |upgrade| match upgrade {
        Some(upgrade) => futures_util::future::Either::Left(upgrade.run(app, peer)),
        None => futures_util::future::Either::Right(std::future::ready(())),
    })
}

/// The HTTP phase of [`serve`]: the requests, until hyper lets go of the connection; returns
/// the WebSocket upgrade a request answered with 101, if one did.
async fn serve_http(accepted: Accepted, app: Rc<App>) -> Option<Box<Upgrade>> {
    let Accepted { stream, peer, listener, pending, from_ip } = accepted;
    let connection = Rc::new(HttpConnection {
        from_ip: RefCell::new(from_ip),
        upgrade: Cell::new(None),
        upgraded: Arc::new(AtomicBool::new(false)),
    });
    let metrics = app.metrics.clone();
    let header_timeout = app.admission.limits().header_timeout;
    let service = hyper::service::service_fn({
        let connection = connection.clone();
        move |request| {
            let (app, connection) = (app.clone(), connection.clone());
            async move {
                Ok::<_, std::convert::Infallible>(
                    app.route(request, peer, listener, connection).await,
                )
            }
        }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(SmolTimer::new())
        // Bounds both a request's headers and the idle time before the next request on a
        // keep-alive connection: a silent or trickling socket is let go.
        .header_read_timeout(header_timeout)
        .serve_connection(FuturesIo::new(HttpIo::new(stream, &connection)), service)
        .with_upgrades();
    match http.await {
        Err(error) if error.is_timeout() => metrics.refused_socket("header_timeout"),
        Err(error) => tracing::debug!(%peer, %error, "HTTP connection ended with an error"),
        Ok(()) => {}
    }
    drop(pending);
    connection.upgrade.take()
}

/// What the requests of one HTTP connection hand back to the task that serves it.
struct HttpConnection {
    /// The connection's count against its address, taken by an upgrade (a socket keeps it).
    from_ip: RefCell<Option<FromIp>>,
    /// The WebSocket upgrade a request answered with 101, to run once hyper is done.
    upgrade: Cell<Option<Box<Upgrade>>>,
    /// Whether a request was answered with 101: then what hyper writes (the answer) is kept
    /// to go out with the socket's first frame, instead of in a packet of its own.
    upgraded: Arc<AtomicBool>,
}

/// An accepted WebSocket upgrade.
struct Upgrade {
    on_upgrade: hyper::upgrade::OnUpgrade,
    request: OpenRequest,
    from_ip: Option<FromIp>,
}

impl Upgrade {
    /// Runs the socket until it ends.
    ///
    /// What a task's future holds across an await, every socket carries for its whole life;
    /// hence the upgrade comes boxed and is opened in a boxed future of its own, so that its
    /// parts are gone by the time the socket runs, and the socket runs in a future that holds
    /// only what it needs.
    fn run(self: Box<Self>, app: Rc<App>, peer: SocketAddr) -> impl Future<Output = ()> {
        use futures_util::FutureExt;
        use futures_util::future::Either;
        Box::pin(self.open(app, peer)).then(|opened| match opened {
            Some(socket) => Either::Left(socket),
            None => Either::Right(std::future::ready(())),
        })
    }

    /// Takes the socket from hyper and tells the driver of it; returns the socket's future.
    async fn open(
        self: Box<Self>,
        app: Rc<App>,
        peer: SocketAddr,
    ) -> Option<impl Future<Output = ()> + use<>> {
        let Upgrade { on_upgrade, request, from_ip } = *self;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%peer, %error, "upgrade failed");
                return None;
            }
        };
        let Ok(parts) = upgraded.downcast::<FuturesIo<HttpIo>>() else {
            tracing::error!("upgraded connection of an unexpected type");
            return None;
        };
        // What hyper read past the request is a slice of its 8 KiB read buffer: copy it
        // (usually nothing), so the buffer is not kept for the socket's whole life.
        let prefix = Bytes::copy_from_slice(&parts.read_buf);
        drop(parts.read_buf);
        let HttpIo { stream, head, .. } = parts.io.into_inner();
        // Counted as open (in the metrics, and against its address) while the socket runs.
        let counted = (app.metrics.socket_opened(), from_ip);
        let socket = SocketId(app.next_socket.fetch_add(1, Ordering::Relaxed));
        let (writer, writes) = if head.is_empty() {
            crate::outbox::outbox()
        } else {
            crate::outbox::outbox_holding(Write::Head(Bytes::from(head)))
        };
        let open = Command::Open { socket, writer, stream: stream.clone(), request };
        if !socket::send(&app.commands, open).await {
            return None;
        }
        let reader = Reader::new(stream.clone(), prefix, app.ws_config.clone());
        let (commands, written) = (app.commands.clone(), app.written.clone());
        Some(socket::run(reader, stream, socket, commands, written, writes, counted))
    }
}

impl App {
    async fn route(
        self: Rc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
        listener: Listener,
        connection: Rc<HttpConnection>,
    ) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let api = matches!(listener, Listener::Api | Listener::Public { api: true });
        match (request.method(), path.as_str()) {
            (&Method::GET, "/healthz") => self.health().await,
            (&Method::GET, "/readyz") if self.ready.load(Ordering::Relaxed) => {
                text(StatusCode::OK, "ready\n")
            }
            (&Method::GET, "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            (&Method::GET, "/metrics") => self.metrics().await,
            (&Method::POST, "/api/publish") if api => self.publish(request).await,
            (&Method::POST, "/debug/bus/deaf") if api && self.test_hooks => self.deafen(&request),
            (_, _) if listener == Listener::Api => text(StatusCode::NOT_FOUND, "not found\n"),
            (&Method::GET, "/.well-known/jwks.json") if self.dev_jwks.is_some() => {
                let mut response = text(StatusCode::OK, self.dev_jwks.clone().unwrap_or_default());
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
            }
            (&Method::GET, p) if p == self.path => self.upgrade(request, peer, &connection),
            (&Method::GET, p) if p.starts_with("/app/") && self.static_dir.is_some() => {
                self.static_file(p.trim_start_matches("/app/")).await
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// Every hub's counts and view of the bus, summed (`None` once they are shutting down).
    async fn stats(&self) -> Option<(HubStats, BusStats)> {
        let mut total = (HubStats::default(), BusStats { pending_publishes: 0, healthy: true });
        for hub in self.hubs.iter() {
            let (stats, bus) = ask(hub, |reply| Command::Stats { reply }).await?;
            total.0.add(&stats);
            total.1.pending_publishes += bus.pending_publishes;
            total.1.healthy &= bus.healthy;
        }
        Some(total)
    }

    /// Always 200 while the process runs (a bus that is down is no reason to restart it: local
    /// traffic is served); the body says `ok`, or `degraded (bus: ...)` with why.
    async fn health(&self) -> Response<Body> {
        let shards = self.shards.max(1);
        if let Some((link, bus)) = self.buses.iter().enumerate().find(|(_, b)| !b.is_up()) {
            let problem = if shards > 1 {
                format!("shard {}: {}", link % shards, bus.problem())
            } else {
                bus.problem()
            };
            return text(StatusCode::OK, format!("degraded (bus: {problem})\n"));
        }
        match self.stats().await {
            Some((_, stats)) if !stats.healthy => {
                text(StatusCode::OK, "degraded (bus: subscriptions not confirmed yet)\n")
            }
            _ => text(StatusCode::OK, "ok\n"),
        }
    }

    async fn metrics(&self) -> Response<Body> {
        let Some((stats, bus)) = self.stats().await else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        };
        let mut response = text(StatusCode::OK, self.metrics.render(&stats, bus));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        response
    }

    /// Answers the upgrade with 101; the connection's task runs the socket once hyper lets go
    /// of it ([`Upgrade::run`]).
    fn upgrade(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        connection: &HttpConnection,
    ) -> Response<Body> {
        // Behind a trusted proxy, the socket counts against its client's address.
        if self.admission.trusts(peer.ip()) {
            let forwarded = request
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            match self.admission.admit_forwarded(forwarded) {
                Ok(counted) => *connection.from_ip.borrow_mut() = counted,
                Err(_) => return text(StatusCode::TOO_MANY_REQUESTS, "too many sockets\n"),
            }
        }
        let from_ip = connection.from_ip.borrow_mut().take();
        let headers = request.headers();
        let is_upgrade = headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return text(StatusCode::BAD_REQUEST, "a WebSocket upgrade is expected here\n");
        };
        if !is_upgrade {
            return text(StatusCode::BAD_REQUEST, "a WebSocket upgrade is expected here\n");
        }
        // hyper upgrades HTTP/1.1 only (and RFC 6455 asks for it): a 101 to an older request
        // would be held for a socket that never comes (see `HttpConnection::upgraded`).
        if request.version() != hyper::Version::HTTP_11 {
            return text(StatusCode::BAD_REQUEST, "a WebSocket upgrade needs HTTP/1.1\n");
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
            let mut response = text(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only\n");
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return response;
        }
        let open = OpenRequest {
            query: request.uri().query().map(query_pairs).unwrap_or_default(),
            cookies: headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            origin: headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned),
            peer: Some(peer),
        };
        let on_upgrade = hyper::upgrade::on(&mut request);
        connection.upgrade.set(Some(Box::new(Upgrade { on_upgrade, request: open, from_ip })));
        // The 101 goes out with the socket's first frame (the hub answers every upgrade with
        // one: `established`, or an error and a close): one packet for both, and one write.
        connection.upgraded.store(true, Ordering::Relaxed);

        let mut response = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
        let accept = derive_accept_key(key.as_bytes());
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(value) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
        }
        response
    }

    /// A file of the static directory (the browser client's build, the demo page). Only plain
    /// relative paths: no `..`, no hidden files.
    async fn static_file(&self, path: &str) -> Response<Body> {
        let Some(dir) = &self.static_dir else { return text(StatusCode::NOT_FOUND, "not found\n") };
        let path = if path.is_empty() { "index.html" } else { path };
        let plain = path.split('/').all(|part| !part.is_empty() && !part.starts_with('.'));
        if !plain {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        let file = dir.join(path);
        let Ok(bytes) = smol::unblock(move || std::fs::read(file)).await else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        let kind = match path.rsplit('.').next().unwrap_or_default() {
            "html" => "text/html; charset=utf-8",
            "js" | "mjs" => "text/javascript; charset=utf-8",
            "wasm" => "application/wasm",
            "css" => "text/css; charset=utf-8",
            "json" | "map" => "application/json",
            "png" => "image/png",
            "svg" => "image/svg+xml",
            _ => "application/octet-stream",
        };
        let mut response = text(StatusCode::OK, bytes);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }

    /// The refusal of a `request` that does not present the API key; `None` when it does.
    fn refuse_without_api_key(&self, request: &Request<Incoming>) -> Option<Response<Body>> {
        let error = |status, message: &str| json(status, serde_json::json!({ "error": message }));
        let Some(key) = &self.api_key else {
            return Some(error(StatusCode::NOT_FOUND, "the publish API is off (no --api-key)"));
        };
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), key.as_bytes())) {
            return Some(error(StatusCode::UNAUTHORIZED, "bad or missing API key"));
        }
        None
    }

    /// `POST /debug/bus/deaf` (`--test-hooks` only): the Redis subscriber connection in use
    /// drops everything it receives until the hub's probe notices and has it renewed.
    fn deafen(&self, request: &Request<Incoming>) -> Response<Body> {
        if let Some(refusal) = self.refuse_without_api_key(request) {
            return refusal;
        }
        if self.buses.is_empty() {
            return json(StatusCode::CONFLICT, serde_json::json!({ "error": "no --redis-url" }));
        }
        self.buses.iter().for_each(|bus| bus.deafen());
        json(StatusCode::OK, serde_json::json!({ "deaf": true }))
    }

    /// `POST /api/publish`: the backend's way in.
    async fn publish(&self, request: Request<Incoming>) -> Response<Body> {
        let error = |status, message: &str| json(status, serde_json::json!({ "error": message }));
        if let Some(refusal) = self.refuse_without_api_key(&request) {
            return refusal;
        }
        if let Err(wait) = self.api_bucket.take() {
            let mut response =
                error(StatusCode::TOO_MANY_REQUESTS, "the publish API's rate limit was reached");
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        let limit = self.admission.limits().api_max_body;
        let body = match Limited::new(request.into_body(), limit).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                let message = format!("the body is over the limit of {limit} bytes");
                return error(StatusCode::PAYLOAD_TOO_LARGE, &message);
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let (target, outgoing) = match parse_publish(&body) {
            Ok(parsed) => parsed,
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        };
        match self.send(target, outgoing).await {
            Some(Ok(delivered)) => {
                json(StatusCode::OK, serde_json::json!({ "delivered": delivered }))
            }
            Some(Err(refused @ RefusedSend::TooLarge { .. })) => {
                error(StatusCode::PAYLOAD_TOO_LARGE, &refused.to_string())
            }
            Some(Err(refused)) => error(StatusCode::BAD_REQUEST, &refused.to_string()),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        }
    }

    /// Sends a message of the publish API through the hubs; the count is of every hub's
    /// sessions reached (`None`: shutting down). A message to one connection goes to every hub
    /// (the connection is on one of them). Anything else goes through the first hub alone,
    /// whatever thread took the request, so that calls made one after another are placed on
    /// the bus, and delivered, in the order they were made; the other hubs say how many of
    /// their members it reaches.
    async fn send(&self, target: Target, outgoing: Outgoing) -> Option<Result<usize, RefusedSend>> {
        let (first, others) = self.hubs.split_first()?;
        let sent = ask(first, |reply| Command::Send {
            target: target.clone(),
            outgoing: outgoing.clone(),
            reply,
        });
        let mut delivered = match sent.await? {
            Ok(delivered) => delivered,
            Err(refused) => return Some(Err(refused)),
        };
        for hub in others {
            delivered += match &target {
                Target::Connection(_) => {
                    let (target, outgoing) = (target.clone(), outgoing.clone());
                    // Refused by the first hub already if at all.
                    ask(hub, |reply| Command::Send { target, outgoing, reply }).await?.unwrap_or(0)
                }
                _ => ask(hub, |reply| Command::Count { target: target.clone(), reply }).await?,
            };
        }
        Some(Ok(delivered))
    }
}

/// Sends a hub the command `make` builds around a reply channel, and waits for the reply
/// (`None`: the hub is gone).
async fn ask<T>(
    hub: &async_channel::Sender<Command>,
    make: impl FnOnce(async_channel::Sender<T>) -> Command,
) -> Option<T> {
    let (reply, answer) = async_channel::bounded(1);
    hub.send(make(reply)).await.ok()?;
    answer.recv().await.ok()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PublishRequest<'a> {
    conversation_id: Option<String>,
    user_id: Option<String>,
    #[serde(default)]
    broadcast: bool,
    #[serde(borrow)]
    message: PublishMessage<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PublishMessage<'a> {
    #[serde(rename = "type")]
    message_type: String,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    correlation_id: Option<String>,
}

fn parse_publish(body: &[u8]) -> Result<(Target, Outgoing), String> {
    let request: PublishRequest<'_> =
        serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))?;
    let message_type = MessageType::new(&request.message.message_type)
        .map_err(|e| format!("message.type: {e}"))?;
    if message_type.is_system() {
        return Err("message.type: system.* messages are the connection layer's own; publish control.* or data.*".into());
    }
    let payload = match request.message.payload {
        Some(raw) => Payload::from_json(raw.get()).map_err(|e| format!("message.payload: {e}"))?,
        None => Payload::empty(),
    };
    let correlation_id = request
        .message
        .correlation_id
        .map(|c| Id::new(&c).map_err(|e| format!("message.correlationId: {e}")))
        .transpose()?;
    let (target, conversation_id) =
        match (request.conversation_id, request.user_id, request.broadcast) {
            (Some(c), None, false) => {
                let id = Id::name(&c).map_err(|e| format!("conversationId: {e}"))?;
                (Target::Conversation { conversation_id: id.clone(), except: None }, Some(id))
            }
            (None, Some(u), false) if !u.is_empty() => (Target::User(u), None),
            (None, None, true) => (Target::All, None),
            _ => return Err("name exactly one of conversationId, userId or broadcast: true".into()),
        };
    let outgoing =
        Outgoing { conversation_id, correlation_id, ..Outgoing::new(message_type, payload) };
    Ok((target, outgoing))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A query's pairs, decoded as `application/x-www-form-urlencoded`.
///
/// A pair with nothing to decode (no `%`, no `+`) is taken as it is: the token, base64url, is
/// most of an upgrade's request line, and form_urlencoded goes over it a byte at a time twice
/// and checks its UTF-8 again (3 % of a connect's CPU), though the URI is already a `str`.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let plain = pair.bytes().fold(true, |plain, b| plain & (b != b'%') & (b != b'+'));
            if plain {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (name.to_owned(), value.to_owned())
            } else {
                let decoded = form_urlencoded::parse(pair.as_bytes()).next().unwrap_or_default();
                (decoded.0.into_owned(), decoded.1.into_owned())
            }
        })
        .collect()
}

/// The accepted connection as hyper reads and writes it: through the socket's shared handle,
/// which waits for readiness in one waker slot per direction. (async-net's `TcpStream` waits
/// with futures that take a slot in a list its registration keeps for the socket's life: 96
/// bytes, for a list only the HTTP phase used.) Once a request is answered with 101, what
/// hyper writes is kept in `head` rather than sent.
struct HttpIo {
    stream: Stream,
    /// The connection's [`HttpConnection::upgraded`] (hyper wants an I/O it can send).
    upgraded: Arc<AtomicBool>,
    head: Vec<u8>,
}

impl HttpIo {
    fn new(stream: Stream, connection: &HttpConnection) -> Self {
        HttpIo { stream, upgraded: connection.upgraded.clone(), head: Vec::new() }
    }
}

impl futures_util::AsyncRead for HttpIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut &*self.stream).poll_read(cx, buf)
    }
}

impl futures_util::AsyncWrite for HttpIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.upgraded.load(Ordering::Relaxed) {
            self.head.extend_from_slice(buf);
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        std::pin::Pin::new(&mut &*self.stream).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut &*self.stream).poll_flush(cx)
    }
    /// Shuts the write side down, as async-net's `TcpStream` does (async-io's handle only
    /// flushes): the peer hears the end when hyper closes, not when the task is dropped.
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(self.stream.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_decodes_as_form_urlencoded_does() {
        for query in [
            "token=eyJhbGciOi.eyJzdWIi.c2ln-_&conversation_id=demo",
            "a=1&&b=&c&=d&e==f",
            "q=a+b%20c%2Bd&%74oken=x&bad=%zz%e2%82&utf=%C3%A9t%C3%A9&last=é",
            "",
            "&",
        ] {
            let expected: Vec<(String, String)> =
                form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            assert_eq!(query_pairs(query), expected, "{query}");
        }
    }

    #[test]
    fn publish_bodies() {
        let (target, outgoing) =
            parse_publish(br#"{"conversationId":"c-1","message":{"type":"data.message.created","payload":{"x":1}}}"#).unwrap();
        assert!(matches!(target, Target::Conversation { .. }));
        assert_eq!(outgoing.payload.as_str(), r#"{"x":1}"#);
        assert!(matches!(
            parse_publish(br#"{"broadcast":true,"message":{"type":"data.a.b"}}"#),
            Ok((Target::All, _))
        ));
        assert!(
            parse_publish(br#"{"userId":"u","broadcast":true,"message":{"type":"data.a.b"}}"#)
                .is_err()
        );
        assert!(parse_publish(br#"{"userId":"u","message":{"type":"nope"}}"#).is_err());
        assert!(
            parse_publish(br#"{"userId":"u","message":{"type":"data.a.b","payload":[1]}}"#)
                .is_err()
        );
        assert!(parse_publish(b"not json").is_err());
        assert!(
            parse_publish(br#"{"userId":"u","message":{"type":"system.connection.close"}}"#)
                .unwrap_err()
                .contains("system")
        );
        assert!(
            constant_time_eq(b"abc", b"abc")
                && !constant_time_eq(b"abc", b"abd")
                && !constant_time_eq(b"ab", b"abc")
        );
    }
}
