//! The server: binds, wires the hub's driver to sockets, HTTP and signals, and runs until a
//! graceful shutdown has drained every connection.

use crate::admission::Admission;
use crate::auth::{DevIssuer, KeySet, KeySource, MemorySessions, Rules, SessionStore, Verifier};
use crate::authorize::{AllowAll, Authorizer, Callback, ClaimRule};
use crate::config::{Authorize, Settings};
use crate::driver::{Clock, Command, Driver};
use crate::http::{Accepted, ApiBucket, App, Listener};
use crate::metrics::Metrics;
use crate::redis::Bus;
use async_net::TcpListener;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use socket2::{Domain, Socket, Type};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use switchboard_core::protocol::TypePattern;
use switchboard_core::server::{Hub, Input, Rejection, Router};

/// The issuer of dev tokens (`--dev`).
pub const DEV_ISSUER: &str = "https://switchboard.dev.invalid/realms/dev";

/// Something that registers handlers or middleware on a hub's router (once per hub).
type RouterSetup = Arc<dyn Fn(&mut Router) + Send + Sync>;

/// Makes a hub's authorizer, on the hub's thread.
type MakeAuthorizer = Arc<dyn Fn() -> Rc<dyn Authorizer> + Send + Sync>;

/// A configured server, not yet running. The binary is `Server::new(settings).run()`; an
/// application embeds the same with its own handlers:
///
/// ```no_run
/// use switchboard_smol::{Server, Settings};
/// use switchboard_core::protocol::{MessageType, TypePattern};
///
/// let settings = Settings::resolve(Default::default()).unwrap();
/// Server::new(settings)
///     .with_router(|router| {
///         router.on(TypePattern::new("data.echo.request").unwrap(), |cx, envelope| {
///             cx.reply(MessageType::new("data.echo.response").unwrap(), envelope.payload.clone());
///             Ok(())
///         });
///     })
///     .run()
///     .unwrap();
/// ```
///
/// With `--threads` above 1 the server runs one hub per thread, each with its own listener
/// on the address (`SO_REUSEPORT`), joined by a bus in the process (or by Redis): what is set
/// up here is set up on every hub.
pub struct Server {
    settings: Settings,
    configure: Vec<RouterSetup>,
    sessions: Arc<dyn SessionStore>,
    authorizer: Option<MakeAuthorizer>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Server {
    /// A server with `settings`, no handlers of the application's, an in-memory session
    /// store, and the authorizer the settings name.
    pub fn new(settings: Settings) -> Self {
        Server {
            settings,
            configure: Vec::new(),
            sessions: Arc::new(MemorySessions::default()),
            authorizer: None,
        }
    }

    /// Registers handlers and middleware on every hub's router.
    pub fn with_router(mut self, configure: impl Fn(&mut Router) + Send + Sync + 'static) -> Self {
        self.configure.push(Arc::new(configure));
        self
    }

    /// Uses `store` to map session cookies to users.
    pub fn with_sessions(mut self, store: impl SessionStore + 'static) -> Self {
        self.sessions = Arc::new(store);
        self
    }

    /// Decides joins with the application's own authorizer (made on each hub's thread by
    /// `make`), instead of the one the settings name.
    pub fn with_authorizer<A: Authorizer + 'static>(
        mut self,
        make: impl Fn() -> A + Send + Sync + 'static,
    ) -> Self {
        self.authorizer = Some(Arc::new(move || Rc::new(make()) as Rc<dyn Authorizer>));
        self
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    pub fn run(self) -> Result<(), String> {
        let Server { settings, configure, sessions, authorizer: custom } = self;
        let threads = settings.threads;
        let listeners = bind(&settings.listen, threads)?;
        let addr = listeners.first().and_then(|l| l.local_addr().ok()).ok_or("no listener")?;
        let api_listener = match &settings.api_listen {
            Some(api) => Some(std::net::TcpListener::bind(api).map_err(|e| format!("{api}: {e}"))?),
            None => None,
        };

        let (verifier, dev) = verifier(&settings, sessions)?;
        let authorizer = authorizer(&settings, custom)?;
        // The only randomness the server draws from the OS: the seed of the hubs and the bus.
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();

        let metrics = Arc::new(Metrics::default());
        // The bus between hubs: Redis (each hub its own links, through their own threads), the
        // bus in the process for several hubs, or nothing for one (it places its messages
        // itself). Redis need not be up: local traffic is served meanwhile.
        let buses: Vec<Vec<Bus>> = match &settings.redis {
            Some(redis) => (0..threads)
                .map(|_| crate::redis::start(redis, metrics.clone()))
                .collect::<Result<_, _>>()?,
            None if threads == 1 => {
                metrics.set_bus_up();
                vec![Vec::new()]
            }
            None => {
                metrics.set_bus_up();
                let (len, ttl) = (settings.history_len, settings.history_ttl);
                let buses = crate::process_bus::start(threads, len, ttl, seed)?;
                buses.into_iter().map(|bus| vec![bus]).collect()
            }
        };
        let inboxes: Vec<_> = (0..threads).map(|_| async_channel::bounded(4096)).collect();
        let hubs: Arc<[async_channel::Sender<Command>]> =
            inboxes.iter().map(|(commands, _)| commands.clone()).collect();
        let shared = Arc::new(Shared {
            ready: Arc::new(AtomicBool::new(true)),
            admission: Admission::new(settings.http.clone(), metrics.clone()),
            api_bucket: Arc::new(ApiBucket::new(settings.http.api_rate)),
            statuses: buses.iter().flatten().map(|bus| bus.status.clone()).collect(),
            dev_jwks: dev.as_ref().map(|d| d.jwks().to_string()),
            hubs: hubs.clone(),
            metrics,
            verifier,
            authorizer,
            configure,
            seed,
            settings,
        });

        watch_signals(shared.ready.clone(), hubs.clone(), shared.settings.shutdown_grace)?;
        let mut api_listener = api_listener;
        let threads = listeners
            .into_iter()
            .zip(buses)
            .zip(inboxes)
            .enumerate()
            .map(|(index, ((listener, buses), inbox))| {
                let (shared, api) = (shared.clone(), api_listener.take());
                std::thread::Builder::new()
                    .name(format!("switchboard-hub-{index}"))
                    .spawn(move || serve(shared, index, listener, api, buses, inbox))
                    .map_err(|e| format!("cannot start hub thread {index}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if shared.settings.redis.is_none() {
            // The hubs' links to the bus in the process come up at once: "listening" is said
            // once they have (Redis may be down, and is not waited for).
            linked_up(&hubs, std::time::Duration::from_secs(5));
        }
        announce(addr, &shared.settings, dev.as_ref())?;
        let mut result = Ok(());
        for thread in threads {
            let outcome = thread.join().unwrap_or_else(|_| Err("a hub's thread panicked".into()));
            result = result.and(outcome);
        }
        tracing::info!("drained; exiting");
        result
    }
}

/// The token checks every hub shares, and dev mode's issuer (`--dev`).
fn verifier(
    settings: &Settings,
    sessions: Arc<dyn SessionStore>,
) -> Result<(Arc<Verifier>, Option<DevIssuer>), String> {
    let mut issuers = settings.issuers.clone();
    let dev = if settings.dev {
        // One issuer for every dev instance on the machine (not one per address): they
        // share the key too, so a client resumes on any of them with the token it has.
        let issuer = DEV_ISSUER.to_owned();
        issuers.push(issuer.clone());
        Some(DevIssuer::load_or_create(&settings.dev_key, issuer)?)
    } else {
        None
    };
    let (keys, source) = match (&dev, &settings.jwks_file, &settings.jwks_url) {
        (Some(dev), _, _) => {
            (HashMap::from([(dev.kid.clone(), dev.public_key())]), KeySource::Fixed)
        }
        (None, Some(path), _) => {
            let source = KeySource::File(path.clone());
            (source.load()?, source)
        }
        (None, None, Some(url)) => {
            let source = KeySource::Url(url.clone());
            // The identity provider may be down at start: keep going and fetch on demand.
            let keys = source.load().unwrap_or_else(|error| {
                tracing::warn!(%error, "could not fetch the signing keys; will retry when a token arrives");
                HashMap::new()
            });
            (keys, source)
        }
        (None, None, None) => {
            tracing::warn!("no --jwks-file, --jwks-url or --dev: every token will be refused");
            (HashMap::new(), KeySource::Fixed)
        }
    };
    let grants_claim = match &settings.authorize {
        Some(Authorize::Claims { claim, .. }) => claim.clone(),
        _ => None,
    };
    let rules = Rules {
        issuers: issuers.into_iter().collect(),
        audiences: settings.audiences.iter().cloned().collect(),
        azps: settings.azps.iter().cloned().collect(),
        // Dev tokens carry no audience of the operator's choosing.
        any_audience: settings.any_audience
            || (settings.dev && settings.audiences.is_empty() && settings.azps.is_empty()),
        leeway: settings.hub.clock_leeway,
        grants_claim,
    };
    let verifier =
        Verifier::new(KeySet::new(keys, source), rules, settings.allowed_origins.clone(), sessions);
    Ok((Arc::new(verifier), dev))
}

/// What makes each hub's authorizer: the application's own (`custom`), or the one the
/// settings name.
fn authorizer(
    settings: &Settings,
    custom: Option<MakeAuthorizer>,
) -> Result<MakeAuthorizer, String> {
    Ok(match (custom, &settings.authorize) {
        (Some(make), _) => make,
        (None, Some(Authorize::AllowAll)) => Arc::new(|| Rc::new(AllowAll) as Rc<dyn Authorizer>),
        (None, Some(Authorize::Claims { roles, .. })) => {
            let roles = roles.clone();
            Arc::new(move || Rc::new(ClaimRule { roles: roles.clone() }) as Rc<dyn Authorizer>)
        }
        (None, Some(Authorize::Callback(config))) => {
            let config = config.clone();
            Arc::new(move || Rc::new(Callback::new(config.clone())) as Rc<dyn Authorizer>)
        }
        (None, None) => {
            return Err("no authorizer: pass --authorize-url, --authorize-claim/--authorize-role or --authorize allow-all, or give the server one with with_authorizer".into());
        }
    })
}

/// What every hub's thread starts from.
struct Shared {
    settings: Settings,
    configure: Vec<RouterSetup>,
    authorizer: MakeAuthorizer,
    /// One for every hub: a token verified on one is known to all, and an unknown key id
    /// starts one fetch of the keys, not one per hub.
    verifier: Arc<Verifier>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    admission: Arc<Admission>,
    api_bucket: Arc<ApiBucket>,
    statuses: Arc<[Arc<crate::redis::Status>]>,
    hubs: Arc<[async_channel::Sender<Command>]>,
    dev_jwks: Option<String>,
    seed: u64,
}

/// The listeners on `listen`: one, or with several hubs one per hub on the same address
/// (`SO_REUSEPORT`: the kernel spreads connections over them).
fn bind(listen: &str, hubs: usize) -> Result<Vec<std::net::TcpListener>, String> {
    let failed = |e: std::io::Error| format!("{listen}: {e}");
    let mut addr = listen
        .to_socket_addrs()
        .map_err(failed)?
        .next()
        .ok_or_else(|| format!("{listen}: no address"))?;
    // Bound alone first: a port in use fails here as it would with one hub (with
    // `SO_REUSEPORT` alone, another server of the same user could share it unnoticed), and
    // port 0 becomes the free port every hub then binds.
    let probe = std::net::TcpListener::bind(addr).map_err(failed)?;
    if hubs == 1 {
        return Ok(vec![probe]);
    }
    addr = probe.local_addr().map_err(failed)?;
    drop(probe);
    (0..hubs)
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.bind(&addr.into())?;
            socket.listen(1024)?;
            Ok(socket.into())
        })
        .collect::<Result<_, std::io::Error>>()
        .map_err(failed)
}

/// Waits until every hub says its link to the bus is up and its subscriptions confirmed, for
/// at most `patience`.
fn linked_up(hubs: &[async_channel::Sender<Command>], patience: std::time::Duration) {
    let until = std::time::Instant::now() + patience;
    for hub in hubs {
        while std::time::Instant::now() < until {
            let (reply, answer) = async_channel::bounded(1);
            if hub.send_blocking(Command::Stats { reply }).is_err() {
                break;
            }
            match answer.recv_blocking() {
                Ok((_, bus)) if !bus.healthy => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                _ => break,
            }
        }
    }
}

/// Prints where the server listens and, in dev mode, a token and the demo's address.
fn announce(addr: SocketAddr, settings: &Settings, dev: Option<&DevIssuer>) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "switchboard listening on {addr}");
    if let Some(dev) = dev {
        let token = dev.token("dev-user", 12)?;
        let _ = writeln!(
            out,
            "dev mode: tokens are signed with the key in {} (JWKS at http://{addr}/.well-known/jwks.json)",
            settings.dev_key.display()
        );
        let _ = writeln!(out, "  token (12 h, user dev-user): {token}");
        let _ = writeln!(
            out,
            "  connect: ws://{addr}{}?token={token}&conversation_id=demo",
            settings.path
        );
        match &settings.static_dir {
            Some(_) => {
                let demo = format!("http://{addr}/app/demo.html?token={token}&conversation=demo");
                let _ = writeln!(out, "  demo (open it in two tabs): {demo}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "  demo: build the browser client first (cd adapter-wasm && npm ci && npm run build), then restart"
                );
            }
        }
    }
    let _ = out.flush();
    Ok(())
}

/// On SIGTERM or SIGINT: readiness goes false and every hub shuts down; a second signal or
/// the grace period ends the process regardless.
fn watch_signals(
    ready: Arc<AtomicBool>,
    hubs: Arc<[async_channel::Sender<Command>]>,
    grace: std::time::Duration,
) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let mut signals = signals.forever();
        if signals.next().is_none() {
            return;
        }
        tracing::info!("shutting down");
        ready.store(false, Ordering::Relaxed);
        for hub in hubs.iter() {
            let _ = hub.send_blocking(Command::Shutdown);
        }
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            tracing::warn!("grace period over; exiting");
            std::process::exit(0);
        });
        if signals.next().is_some() {
            std::process::exit(0);
        }
    });
    Ok(())
}

/// Runs hub `index` on this thread until it has drained after a shutdown.
fn serve(
    shared: Arc<Shared>,
    index: usize,
    listener: std::net::TcpListener,
    api_listener: Option<std::net::TcpListener>,
    buses: Vec<Bus>,
    (commands, inbox): (async_channel::Sender<Command>, async_channel::Receiver<Command>),
) -> Result<(), String> {
    let executor = Rc::new(smol::LocalExecutor::new());
    let run =
        serve_on(shared, index, listener, api_listener, buses, commands, inbox, executor.clone());
    smol::block_on(executor.run(run))
}

#[allow(clippy::too_many_arguments)]
async fn serve_on(
    shared: Arc<Shared>,
    index: usize,
    listener: std::net::TcpListener,
    api_listener: Option<std::net::TcpListener>,
    buses: Vec<Bus>,
    commands: async_channel::Sender<Command>,
    inbox: async_channel::Receiver<Command>,
    executor: Rc<smol::LocalExecutor<'static>>,
) -> Result<(), String> {
    let settings = &shared.settings;
    let listener = TcpListener::try_from(listener).map_err(|e| e.to_string())?;
    let api_listener =
        api_listener.map(TcpListener::try_from).transpose().map_err(|e| e.to_string())?;
    let authorizer = (shared.authorizer)();

    let clock = Clock::start();
    let unix_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let seed = shared.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut hub =
        Hub::new(settings.hub.clone(), seed, clock.now(), unix_ms).map_err(|e| e.to_string())?;
    for pattern in &settings.relay {
        let pattern = TypePattern::new(pattern).map_err(|e| format!("--relay {pattern:?}: {e}"))?;
        hub.router_mut().on(pattern, relay);
    }
    for configure in &shared.configure {
        configure(hub.router_mut());
    }

    let (written, written_inbox) = async_channel::bounded(4096);
    let app = Rc::new(App {
        path: settings.path.clone(),
        commands: commands.clone(),
        hubs: shared.hubs.clone(),
        written,
        metrics: shared.metrics.clone(),
        ready: shared.ready.clone(),
        next_socket: AtomicU64::new(1),
        ws_config: Rc::new(
            WebSocketConfig::default()
                .read_buffer_size(512)
                // tungstenite only reads (the socket's writer writes every frame itself); what
                // it would write, its automatic replies, is dropped without being buffered.
                .write_buffer_size(0)
                // The hub answers oversized frames with a proper error and 1009, up to four
                // times its limit (plus 64 KiB); tungstenite drops the socket on anything larger,
                // so no one frame costs more memory than that.
                .max_message_size(Some(settings.hub.max_frame_bytes * 4 + 64 * 1024))
                .max_frame_size(Some(settings.hub.max_frame_bytes * 4 + 64 * 1024)),
        ),
        api_key: settings.api_key.clone(),
        api_bucket: shared.api_bucket.clone(),
        admission: shared.admission.clone(),
        dev_jwks: shared.dev_jwks.clone(),
        static_dir: settings.static_dir.clone(),
        buses: shared.statuses.clone(),
        shards: settings.hub.bus.shards,
        test_hooks: settings.test_hooks,
    });

    let public = Listener::Public { api: settings.api_listen.is_none() };
    executor.spawn(accept(listener, app.clone(), public, executor.clone())).detach();
    if let Some(api_listener) = api_listener {
        executor.spawn(accept(api_listener, app.clone(), Listener::Api, executor.clone())).detach();
    }

    // Each bus link's events reach the hub through the driver's inbox, in order.
    for (shard, bus) in buses.iter().enumerate() {
        let (events, loopback) = (bus.events.clone(), commands.clone());
        executor
            .spawn(async move {
                while let Ok(event) = events.recv().await {
                    let input = Input::Bus(shard, event);
                    if loopback.send(Command::Input(input)).await.is_err() {
                        return;
                    }
                }
            })
            .detach();
    }

    let driver = Driver::new(
        hub,
        clock,
        inbox,
        written_inbox,
        commands,
        shared.verifier.clone(),
        authorizer,
        shared.metrics.clone(),
        executor.clone(),
    );
    driver.with_buses(buses.into_iter().map(|bus| bus.commands).collect()).run().await;
    Ok(())
}

/// Accepts connections on `listener` as long as the server runs; each one admitted (see
/// [`Admission`]) is served on the event loop.
async fn accept(
    listener: TcpListener,
    app: Rc<App>,
    role: Listener,
    spawner: Rc<smol::LocalExecutor<'static>>,
) {
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok((pending, from_ip)) = app.admission.admit(peer.ip()) else {
                    // Over a cap: closed before a byte is read.
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let accepted =
                    Accepted { stream: stream.into(), peer, listener: role, pending, from_ip };
                spawner.spawn(crate::http::serve(accepted, app.clone())).detach();
            }
            Err(error) => {
                // Out of file descriptors, most likely: the connection waits in the listen
                // backlog and is retried. Said at most every 10 s.
                let quiet = std::time::Duration::from_secs(10);
                if last_warning.is_none_or(|at| at.elapsed() >= quiet) {
                    tracing::warn!(%error, "accept failed; retrying every 50 ms");
                    last_warning = Some(std::time::Instant::now());
                }
                smol::Timer::after(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// The relay route: a client message re-broadcast to every member of the sender's
/// conversation, the sender included (its copy, with the server's id, timestamp and sequence,
/// is the confirmation). The envelope names the sender (`senderId`, the user) and the message
/// it relays (`correlationId`); the payload belongs to the application and passes untouched.
/// Only members whose join verdict allows writing may relay. Forwarding to a backend (webhook,
/// Redis stream) will hang off the same place.
fn relay(
    cx: &mut switchboard_core::server::Context<'_>,
    envelope: &switchboard_core::protocol::Envelope,
) -> Result<(), Rejection> {
    cx.broadcast_to_conversation(envelope.message_type.clone(), envelope.payload.clone(), true)
}
