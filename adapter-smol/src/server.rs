//! The server: binds, wires the hub's driver to sockets, HTTP and signals, and runs until a
//! graceful shutdown has drained every connection.

use crate::admission::Admission;
use crate::auth::{DevIssuer, KeySet, KeySource, MemorySessions, Rules, SessionStore, Verifier};
use crate::authorize::{AllowAll, Authorizer, Callback, ClaimRule};
use crate::config::{Authorize, Settings};
use crate::driver::{Clock, Command, Driver};
use crate::http::{ApiBucket, App, Listener};
use crate::metrics::Metrics;
use async_net::TcpListener;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use switchboard_core::protocol::TypePattern;
use switchboard_core::server::{Hub, Input, Rejection, Router};

/// The issuer of dev tokens (`--dev`).
pub const DEV_ISSUER: &str = "https://switchboard.dev.invalid/realms/dev";

/// Something that registers handlers or middleware on the hub's router.
type RouterSetup = Box<dyn FnOnce(&mut Router)>;

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
pub struct Server {
    settings: Settings,
    configure: Vec<RouterSetup>,
    sessions: Box<dyn SessionStore>,
    authorizer: Option<Box<dyn FnOnce() -> Rc<dyn Authorizer>>>,
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
            sessions: Box::new(MemorySessions::default()),
            authorizer: None,
        }
    }

    /// Registers handlers and middleware on the hub's router.
    pub fn with_router(mut self, configure: impl FnOnce(&mut Router) + 'static) -> Self {
        self.configure.push(Box::new(configure));
        self
    }

    /// Uses `store` to map session cookies to users.
    pub fn with_sessions(mut self, store: impl SessionStore + 'static) -> Self {
        self.sessions = Box::new(store);
        self
    }

    /// Decides joins with the application's own authorizer (made on the server's thread by
    /// `make`), instead of the one the settings name.
    pub fn with_authorizer<A: Authorizer + 'static>(
        mut self,
        make: impl FnOnce() -> A + Send + 'static,
    ) -> Self {
        self.authorizer = Some(Box::new(move || Rc::new(make()) as Rc<dyn Authorizer>));
        self
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    pub fn run(self) -> Result<(), String> {
        let executor = Rc::new(smol::LocalExecutor::new());
        smol::block_on(executor.run(self.serve(executor.clone())))
    }

    async fn serve(self, executor: Rc<smol::LocalExecutor<'static>>) -> Result<(), String> {
        let Server { settings, configure, sessions, authorizer } = self;
        let listener = TcpListener::bind(&settings.listen)
            .await
            .map_err(|e| format!("{}: {e}", settings.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let api_listener = match &settings.api_listen {
            Some(api) => Some(TcpListener::bind(api).await.map_err(|e| format!("{api}: {e}"))?),
            None => None,
        };

        let mut issuers = settings.issuers.clone();
        let dev = if settings.dev {
            // One issuer for every dev instance on the machine (not one per address): they
            // share the key too, so a client resumes on any of them with the token it has.
            let issuer = DEV_ISSUER.to_owned();
            issuers.push(issuer.clone());
            let dev_key = settings.dev_key.clone();
            Some(smol::unblock(move || DevIssuer::load_or_create(&dev_key, issuer)).await?)
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
                let loader = source.clone();
                let keys = smol::unblock(move || loader.load()).await.unwrap_or_else(|error| {
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
        let verifier = Rc::new(Verifier::new(
            KeySet::new(keys, source),
            rules,
            settings.allowed_origins.clone(),
            sessions,
        ));
        let authorizer: Rc<dyn Authorizer> = match (authorizer, &settings.authorize) {
            (Some(make), _) => make(),
            (None, Some(Authorize::AllowAll)) => Rc::new(AllowAll),
            (None, Some(Authorize::Claims { roles, .. })) => {
                Rc::new(ClaimRule { roles: roles.clone() })
            }
            (None, Some(Authorize::Callback(config))) => Rc::new(Callback::new(config.clone())),
            (None, None) => {
                return Err("no authorizer: pass --authorize-url, --authorize-claim/--authorize-role or --authorize allow-all, or give the server one with with_authorizer".into());
            }
        };

        let clock = Clock::start();
        let unix_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        // The only randomness the server draws from the OS: the hub's seed.
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let mut hub = Hub::new(settings.hub.clone(), seed, clock.now(), unix_ms)
            .map_err(|e| e.to_string())?;
        for pattern in &settings.relay {
            let pattern =
                TypePattern::new(pattern).map_err(|e| format!("--relay {pattern:?}: {e}"))?;
            hub.router_mut().on(pattern, relay);
        }
        for configure in configure {
            configure(hub.router_mut());
        }

        let metrics = Arc::new(Metrics::default());
        // The bus between instances: Redis through its own thread, or nothing (the hub places
        // its messages itself). Redis need not be up: local traffic is served meanwhile.
        let buses = match &settings.redis {
            Some(redis) => crate::redis::start(redis, metrics.clone())?,
            None => {
                metrics.set_bus_up();
                Vec::new()
            }
        };
        let (commands, inbox) = async_channel::bounded::<Command>(4096);
        let (written, written_inbox) = async_channel::bounded(4096);
        let ready = Arc::new(AtomicBool::new(true));
        let app = Rc::new(App {
            path: settings.path.clone(),
            commands: commands.clone(),
            written,
            metrics: metrics.clone(),
            ready: ready.clone(),
            next_socket: AtomicU64::new(1),
            ws_config: WebSocketConfig::default()
                .read_buffer_size(512)
                // tungstenite only reads (the socket's writer writes every frame itself); what
                // it would write, its automatic replies, is dropped without being buffered.
                .write_buffer_size(0)
                // The hub answers oversized frames with a proper error and 1009, up to four
                // times its limit (plus 64 KiB); tungstenite drops the socket on anything larger,
                // so no one frame costs more memory than that.
                .max_message_size(Some(settings.hub.max_frame_bytes * 4 + 64 * 1024))
                .max_frame_size(Some(settings.hub.max_frame_bytes * 4 + 64 * 1024)),
            api_key: settings.api_key.clone(),
            api_bucket: ApiBucket::new(settings.http.api_rate),
            admission: Admission::new(settings.http.clone(), metrics.clone()),
            dev_jwks: dev.as_ref().map(|d| d.jwks().to_string()),
            static_dir: settings.static_dir.clone(),
            buses: buses.iter().map(|bus| bus.status.clone()).collect(),
            test_hooks: settings.test_hooks,
        });

        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "switchboard listening on {addr}");
        if let Some(dev) = &dev {
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
                    let demo =
                        format!("http://{addr}/app/demo.html?token={token}&conversation=demo");
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
        drop(out);

        // Signals: readiness goes false, the hub shuts down; a second signal or the grace
        // period ends the process regardless.
        let signal_ready = ready.clone();
        let signal_commands = commands.clone();
        let grace = settings.shutdown_grace;
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
            signal_ready.store(false, Ordering::Relaxed);
            let _ = signal_commands.send_blocking(Command::Shutdown);
            std::thread::spawn(move || {
                std::thread::sleep(grace);
                tracing::warn!("grace period over; exiting");
                std::process::exit(0);
            });
            if signals.next().is_some() {
                std::process::exit(0);
            }
        });

        let public = Listener::Public { api: api_listener.is_none() };
        executor.spawn(accept(listener, app.clone(), public, executor.clone())).detach();
        if let Some(api_listener) = api_listener {
            executor
                .spawn(accept(api_listener, app.clone(), Listener::Api, executor.clone()))
                .detach();
        }

        // Each bridge's events reach the hub through the driver's inbox, in order.
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

        let mut driver = Driver::new(
            hub,
            clock,
            inbox,
            written_inbox,
            commands,
            verifier,
            authorizer,
            metrics,
            executor.clone(),
        );
        driver = driver.with_buses(buses.into_iter().map(|bus| bus.commands).collect());
        driver.run().await;
        tracing::info!("drained; exiting");
        Ok(())
    }
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
                spawner
                    .spawn(crate::http::serve(stream, peer, app.clone(), role, pending, from_ip))
                    .detach();
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
