//! The server: binds, wires the hub's driver to sockets, HTTP and signals, and runs until a
//! graceful shutdown has drained every connection.

use crate::auth::{DevIssuer, KeySource, MemorySessions, SessionStore, Verifier};
use crate::config::Settings;
use crate::driver::{Clock, Command, Driver};
use crate::http::App;
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
use switchboard_core::protocol::{ErrorCategory, Payload, TypePattern};
use switchboard_core::server::{Hub, Outgoing, Rejection, Router, Target};

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
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Server {
    /// A server with `settings`, no handlers of the application's, and an in-memory session
    /// store.
    pub fn new(settings: Settings) -> Self {
        Server { settings, configure: Vec::new(), sessions: Box::new(MemorySessions::default()) }
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

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    pub fn run(self) -> Result<(), String> {
        let executor = Rc::new(smol::LocalExecutor::new());
        smol::block_on(executor.run(self.serve(executor.clone())))
    }

    async fn serve(self, executor: Rc<smol::LocalExecutor<'static>>) -> Result<(), String> {
        let Server { settings, configure, sessions } = self;
        let listener = TcpListener::bind(&settings.listen)
            .await
            .map_err(|e| format!("{}: {e}", settings.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;

        let mut issuers = settings.issuers.clone();
        let dev = if settings.dev {
            let issuer = format!("http://{addr}/realms/dev");
            issuers.push(issuer.clone());
            Some(DevIssuer::generate(issuer)?)
        } else {
            None
        };
        let (keys, source) = match (&dev, &settings.jwks_file, &settings.jwks_url) {
            (Some(dev), _, _) => {
                let key = dev.key_pair.public_key().with_key_id(&dev.kid);
                (HashMap::from([(dev.kid.clone(), key)]), KeySource::Fixed)
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
        let verifier = Arc::new(Verifier::new(
            keys,
            source,
            issuers,
            settings.audiences.clone(),
            settings.azps.clone(),
            settings.allowed_origins.clone(),
            sessions,
        ));

        let clock = Clock::start();
        let unix_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        // The only randomness the server draws from the OS: the hub's seed.
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let mut hub = Hub::new(settings.hub.clone(), seed, clock.now(), unix_ms);
        for pattern in &settings.relay {
            let pattern =
                TypePattern::new(pattern).map_err(|e| format!("--relay {pattern:?}: {e}"))?;
            hub.router_mut().on(pattern, relay);
        }
        for configure in configure {
            configure(hub.router_mut());
        }

        let metrics = Arc::new(Metrics::default());
        let (commands, inbox) = async_channel::bounded::<Command>(4096);
        let ready = Arc::new(AtomicBool::new(true));
        let app = Rc::new(App {
            path: settings.path.clone(),
            commands: commands.clone(),
            metrics: metrics.clone(),
            ready: ready.clone(),
            executor: executor.clone(),
            next_socket: AtomicU64::new(1),
            ws_config: WebSocketConfig::default()
                .read_buffer_size(1024)
                // Frames queue in tungstenite's buffer until the writer flushes its batch, and
                // go out in one write() per 8 KiB. tungstenite never shrinks that buffer: a
                // socket keeps the room of its largest batch, so it is kept small.
                .write_buffer_size(8 * 1024)
                .max_write_buffer_size(settings.hub.max_outbound_bytes + 64 * 1024)
                // The hub answers oversized frames with a proper error and 1009, up to four
                // times its limit (plus 64 KiB); tungstenite drops the socket on anything larger,
                // so no one frame costs more memory than that.
                .max_message_size(Some(settings.hub.max_frame_bytes * 4 + 64 * 1024))
                .max_frame_size(Some(settings.hub.max_frame_bytes * 4 + 64 * 1024)),
            api_key: settings.api_key.clone(),
            dev_jwks: dev.as_ref().map(|d| d.jwks().to_string()),
        });

        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "switchboard listening on {addr}");
        if let Some(dev) = &dev {
            let token = dev.token("dev-user", 12)?;
            let _ = writeln!(
                out,
                "dev mode: tokens are signed with a key made at start-up (JWKS at http://{addr}/.well-known/jwks.json)"
            );
            let _ = writeln!(out, "  token (12 h, user dev-user): {token}");
            let _ = writeln!(
                out,
                "  connect: ws://{addr}{}?token={token}&conversation_id=demo",
                settings.path
            );
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

        let accept_app = app.clone();
        let spawner = executor.clone();
        executor
            .spawn(async move {
                let mut last_warning: Option<std::time::Instant> = None;
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) => {
                            let _ = stream.set_nodelay(true);
                            spawner
                                .spawn(crate::http::serve(stream, peer, accept_app.clone()))
                                .detach();
                        }
                        Err(error) => {
                            // Out of file descriptors, most likely: the connection waits in the
                            // listen backlog and is retried. Said at most every 10 s.
                            let quiet = std::time::Duration::from_secs(10);
                            if last_warning.is_none_or(|at| at.elapsed() >= quiet) {
                                tracing::warn!(%error, "accept failed; retrying every 50 ms");
                                last_warning = Some(std::time::Instant::now());
                            }
                            smol::Timer::after(std::time::Duration::from_millis(50)).await;
                        }
                    }
                }
            })
            .detach();

        Driver::new(hub, clock, inbox, commands, verifier, metrics).run().await;
        tracing::info!("drained; exiting");
        Ok(())
    }
}

/// The relay route: a client message re-broadcast to every member of the sender's
/// conversation, the sender included (its copy, with the server's id, timestamp and sequence,
/// is the confirmation; its `correlationId` is the original id), with `senderId` added to the
/// payload. Forwarding to a backend (webhook, Redis stream) will hang off the same place.
fn relay(
    cx: &mut switchboard_core::server::Context<'_>,
    envelope: &switchboard_core::protocol::Envelope,
) -> Result<(), Rejection> {
    let Some(conversation_id) = cx.sender.conversation_id.cloned() else {
        return Err(Rejection::new(
            ErrorCategory::Validation,
            "NO_CONVERSATION",
            "relayed messages need a connection with a conversation",
        ));
    };
    let mut payload: serde_json::Map<String, serde_json::Value> = envelope
        .payload
        .parse()
        .map_err(|e| Rejection::new(ErrorCategory::Validation, "INVALID_PAYLOAD", e.to_string()))?;
    payload.insert("senderId".into(), cx.sender.user_id.unwrap_or_default().into());
    let payload = Payload::from_serialize(&payload).map_err(Rejection::from)?;
    let outgoing = Outgoing {
        message_type: envelope.message_type.clone(),
        payload,
        conversation_id: Some(conversation_id.clone()),
        correlation_id: Some(envelope.id.clone()),
    };
    cx.send(Target::Conversation { conversation_id, except: None }, outgoing);
    Ok(())
}
