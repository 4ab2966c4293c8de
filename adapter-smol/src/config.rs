//! The server's configuration: flags, then `SWITCHBOARD_*` environment variables, then an
//! optional TOML file, then the defaults.

use clap::Parser;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use switchboard_core::server::{HubConfig, RateLimit};

/// Command-line flags and environment variables. Every option may also be set in the TOML file
/// named by `--config`, with the flag's name in snake case (`heartbeat_interval = "30s"`).
#[derive(Parser, Debug, Default)]
#[command(
    name = "switchboard",
    version,
    about = "The real-time connection layer of an agent host."
)]
pub struct Args {
    /// A TOML file with defaults for every option below.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:8080].
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    pub listen: Option<String>,
    /// The WebSocket endpoint's path [default: /ws].
    #[arg(long, env = "SWITCHBOARD_PATH")]
    pub path: Option<String>,
    /// Development mode: generate a signing key, serve its JWKS, print a token. Never in
    /// production.
    #[arg(long, env = "SWITCHBOARD_DEV")]
    pub dev: bool,
    /// A JWKS file (the identity provider's `/protocol/openid-connect/certs`). Re-read when a
    /// token names a key id it does not hold (at most once per 10 s).
    #[arg(long, env = "SWITCHBOARD_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL, e.g. `https://sso.example/realms/agents/protocol/openid-connect/certs`.
    /// Fetched at start and again when a token names an unknown key id (at most once per
    /// 10 s, one fetch at a time); the cached keys keep serving when a fetch fails.
    #[arg(long, env = "SWITCHBOARD_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Accepted token issuers, exactly (repeatable), e.g. `https://sso.example/realms/agents`.
    #[arg(long = "issuer", env = "SWITCHBOARD_ISSUER", value_delimiter = ',')]
    pub issuers: Vec<String>,
    /// Accepted audiences (repeatable); a token passes with an accepted audience or `azp`.
    #[arg(long = "audience", env = "SWITCHBOARD_AUDIENCE", value_delimiter = ',')]
    pub audiences: Vec<String>,
    /// Accepted authorized parties, the token's `azp` (repeatable).
    #[arg(long = "azp", env = "SWITCHBOARD_AZP", value_delimiter = ',')]
    pub azps: Vec<String>,
    /// Accept tokens for any audience (only when the issuer serves nothing but this
    /// application). Without it, `--audience` or `--azp` is required.
    #[arg(long, env = "SWITCHBOARD_ANY_AUDIENCE")]
    pub any_audience: bool,
    /// Clock skew tolerated on a token's `exp` and `nbf`, by the verifier and the hub alike
    /// [default: 30s].
    #[arg(long, env = "SWITCHBOARD_CLOCK_LEEWAY", value_parser = parse_duration)]
    pub clock_leeway: Option<Duration>,
    /// Who may join which conversation: `allow-all` lets any authenticated user into any
    /// conversation (dev mode's default; otherwise it must be asked for). See also
    /// `--authorize-claim`, `--authorize-role` and `--authorize-url`.
    #[arg(long, env = "SWITCHBOARD_AUTHORIZE")]
    pub authorize: Option<String>,
    /// Claim rule: a token may join the conversations listed in this claim (a string or an
    /// array of strings; `*` for all), e.g. `conversations`.
    #[arg(long, env = "SWITCHBOARD_AUTHORIZE_CLAIM")]
    pub authorize_claim: Option<String>,
    /// Claim rule: a token with this realm role (or `client:role`) may join any conversation
    /// (repeatable).
    #[arg(long = "authorize-role", env = "SWITCHBOARD_AUTHORIZE_ROLE", value_delimiter = ',')]
    pub authorize_roles: Vec<String>,
    /// The backend decides: `POST URL {userId, conversationId, definitionId}` answered with
    /// `{"allow": bool, "write": bool, "reason": "forbidden"|"conversation_not_found"}`. Fails
    /// closed: an error or a timeout refuses the join (close 1013, retryable).
    #[arg(long, env = "SWITCHBOARD_AUTHORIZE_URL")]
    pub authorize_url: Option<String>,
    /// Limit on one request to `--authorize-url` [default: 2s].
    #[arg(long, env = "SWITCHBOARD_AUTHORIZE_TIMEOUT", value_parser = parse_duration)]
    pub authorize_timeout: Option<Duration>,
    /// How long the backend's answer is reused for the same user and conversation [default:
    /// 10s].
    #[arg(long, env = "SWITCHBOARD_AUTHORIZE_CACHE_TTL", value_parser = parse_duration)]
    pub authorize_cache_ttl: Option<Duration>,
    /// Requests to `--authorize-url` in flight at once [default: 32].
    #[arg(long, env = "SWITCHBOARD_AUTHORIZE_CONCURRENCY")]
    pub authorize_concurrency: Option<usize>,
    /// Origins allowed to connect with a session cookie (repeatable).
    #[arg(long = "allowed-origin", env = "SWITCHBOARD_ALLOWED_ORIGIN", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// How often to ping each connection [default: 30s].
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_INTERVAL", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Silent intervals before closing with 4008 [default: 3].
    #[arg(long, env = "SWITCHBOARD_MAX_MISSED_PONGS")]
    pub max_missed_pongs: Option<u32>,
    /// How long a session outlives its socket [default: 2m].
    #[arg(long, env = "SWITCHBOARD_RESUME_WINDOW", value_parser = parse_duration)]
    pub resume_window: Option<Duration>,
    /// Largest frame accepted, in bytes; larger closes with 1009 [default: 65536].
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
    /// Window over which clients are told to come back after a shutdown [default: 5s].
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_SPREAD", value_parser = parse_duration)]
    pub shutdown_spread: Option<Duration>,
    /// Longest wait for connections to close at shutdown [default: 10s].
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// The bucket over all of a connection's non-system messages, `N/DURATION` [default: 120/60s].
    #[arg(long, env = "SWITCHBOARD_CONNECTION_RATE", value_parser = parse_rate)]
    pub connection_rate: Option<RateLimit>,
    /// A per-type limit, `TYPE=N/DURATION` (repeatable; replaces the spec's defaults).
    #[arg(long = "rate-limit", env = "SWITCHBOARD_RATE_LIMIT", value_delimiter = ',')]
    pub rate_limits: Vec<String>,
    /// The key the backend presents to `POST /api/publish`; without one the API is off.
    #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Serve the publish API on this address only (not on `--listen`), so it need not face
    /// the internet.
    #[arg(long, env = "SWITCHBOARD_API_LISTEN")]
    pub api_listen: Option<String>,
    /// Publish API requests allowed, `N/DURATION` over all callers; more get 429 [default:
    /// 10000/1s].
    #[arg(long, env = "SWITCHBOARD_API_RATE", value_parser = parse_rate)]
    pub api_rate: Option<RateLimit>,
    /// Largest publish request body, in bytes; larger get 413 [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_API_MAX_BODY")]
    pub api_max_body: Option<usize>,
    /// Largest message the server sends, in bytes encoded; the publish API answers 413 above
    /// it [default: 262144].
    #[arg(long, env = "SWITCHBOARD_MAX_OUTGOING_MESSAGE_SIZE")]
    pub max_outgoing_message_size: Option<usize>,
    /// Time a client has to send a request's headers, and the longest idle time between two
    /// requests on a keep-alive connection [default: 10s].
    #[arg(long, env = "SWITCHBOARD_HEADER_TIMEOUT", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// TCP connections that have not finished an upgrade (or are between HTTP requests) at
    /// once; beyond it new ones are closed at once [default: 4096].
    #[arg(long, env = "SWITCHBOARD_MAX_PENDING_UPGRADES")]
    pub max_pending_upgrades: Option<usize>,
    /// Open sockets from one IP address; beyond it new ones are closed at once (0: no cap)
    /// [default: 1024].
    #[arg(long, env = "SWITCHBOARD_MAX_SOCKETS_PER_IP")]
    pub max_sockets_per_ip: Option<usize>,
    /// A proxy whose `X-Forwarded-For` is believed for the per-IP cap (repeatable IP
    /// addresses). Other peers' headers are ignored.
    #[arg(
        long = "trust-forwarded-for",
        env = "SWITCHBOARD_TRUST_FORWARDED_FOR",
        value_delimiter = ','
    )]
    pub trust_forwarded_for: Vec<std::net::IpAddr>,
    /// Sessions one user may hold at once [default: 100]. At the cap, the user's oldest session
    /// waiting for a resume is let go; if none waits, the new connection is refused (4014).
    #[arg(long, env = "SWITCHBOARD_MAX_SESSIONS_PER_USER")]
    pub max_sessions_per_user: Option<usize>,
    /// Serve the files of this directory under `/app/` (the browser client's build and its
    /// demo page). In dev mode, `adapter-wasm/dist` when it exists.
    #[arg(long, env = "SWITCHBOARD_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,
    /// Where dev mode keeps its signing key, so that printed tokens survive a restart
    /// [default: $XDG_STATE_HOME/switchboard/dev-key.pem, or ~/.local/state/switchboard/].
    #[arg(long, env = "SWITCHBOARD_DEV_KEY")]
    pub dev_key: Option<PathBuf>,
    /// Client message types re-broadcast to the sender's conversation (repeatable patterns
    /// such as `data.*`; on as `data.*` in dev mode).
    #[arg(long = "relay", env = "SWITCHBOARD_RELAY", value_delimiter = ',')]
    pub relay: Vec<String>,
    /// Log lines as JSON.
    #[arg(long, env = "SWITCHBOARD_LOG_JSON")]
    pub log_json: bool,
    /// Share channels with other instances through this Redis, e.g. `redis://127.0.0.1:6379`
    /// (`redis://:password@host:port/db`). Repeat it to shard the channels over several
    /// (every instance must list the same ones in the same order; in the environment, separate
    /// them with spaces). Without it the instance is alone: positions are given in process.
    #[arg(long, env = "SWITCHBOARD_REDIS_URL", hide_env_values = true, value_delimiter = ' ')]
    pub redis_url: Vec<String>,
    /// Prefix of the channels' names and keys on Redis, so that several deployments can share
    /// one [default: sb:].
    #[arg(long, env = "SWITCHBOARD_CHANNEL_PREFIX")]
    pub channel_prefix: Option<String>,
    /// Hubs, each on its own thread with its own listener on the address (`SO_REUSEPORT`: the
    /// kernel spreads the connections), joined by a bus in the process (or by Redis with
    /// `--redis-url`) [default: the number of cores].
    #[arg(long, env = "SWITCHBOARD_THREADS")]
    pub threads: Option<usize>,
    /// Messages of history kept per channel on the bus (approximately, on Redis) [default: 1000].
    #[arg(long, env = "SWITCHBOARD_HISTORY_LEN")]
    pub history_len: Option<usize>,
    /// How long a channel's history is kept after its last message [default: 1h].
    #[arg(long, env = "SWITCHBOARD_HISTORY_TTL", value_parser = parse_duration)]
    pub history_ttl: Option<Duration>,
    /// How long a channel stays subscribed on Redis after its last local member left
    /// [default: 5s].
    #[arg(long, env = "SWITCHBOARD_BUS_LINGER", value_parser = parse_duration)]
    pub bus_linger: Option<Duration>,
    /// Test hooks (`POST /debug/bus/deaf`, with the API key): never in production.
    #[arg(long, env = "SWITCHBOARD_TEST_HOOKS")]
    pub test_hooks: bool,
}

/// The same options, from the TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub path: Option<String>,
    pub dev: Option<bool>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub issuers: Vec<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub azps: Vec<String>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    pub heartbeat_interval: Option<String>,
    pub max_missed_pongs: Option<u32>,
    pub resume_window: Option<String>,
    pub max_message_size: Option<usize>,
    pub shutdown_spread: Option<String>,
    pub shutdown_grace: Option<String>,
    pub connection_rate: Option<String>,
    #[serde(default)]
    pub rate_limits: Vec<String>,
    pub api_key: Option<String>,
    #[serde(default)]
    pub relay: Vec<String>,
    pub log_json: Option<bool>,
    pub any_audience: Option<bool>,
    pub clock_leeway: Option<String>,
    pub authorize: Option<String>,
    pub authorize_claim: Option<String>,
    #[serde(default)]
    pub authorize_roles: Vec<String>,
    pub authorize_url: Option<String>,
    pub authorize_timeout: Option<String>,
    pub authorize_cache_ttl: Option<String>,
    pub authorize_concurrency: Option<usize>,
    pub api_listen: Option<String>,
    pub api_rate: Option<String>,
    pub api_max_body: Option<usize>,
    pub max_outgoing_message_size: Option<usize>,
    pub header_timeout: Option<String>,
    pub max_pending_upgrades: Option<usize>,
    pub max_sockets_per_ip: Option<usize>,
    #[serde(default)]
    pub trust_forwarded_for: Vec<std::net::IpAddr>,
    pub max_sessions_per_user: Option<usize>,
    pub dev_key: Option<PathBuf>,
    pub static_dir: Option<PathBuf>,
    /// One URL, or a list of shards.
    pub redis_url: Option<RedisUrls>,
    pub channel_prefix: Option<String>,
    pub threads: Option<usize>,
    pub history_len: Option<usize>,
    pub history_ttl: Option<String>,
    pub bus_linger: Option<String>,
    pub test_hooks: Option<bool>,
}

/// Who decides joins.
#[derive(Debug, Clone, PartialEq)]
pub enum Authorize {
    /// Everyone everywhere (dev mode, or asked for by name).
    AllowAll,
    /// The token's claim and roles ([`crate::authorize::ClaimRule`]).
    Claims { claim: Option<String>, roles: Vec<String> },
    /// The backend ([`crate::authorize::Callback`]).
    Callback(crate::authorize::CallbackConfig),
}

/// The HTTP side's limits on sockets that have not become WebSockets.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub max_pending_upgrades: usize,
    /// 0: no cap.
    pub max_sockets_per_ip: usize,
    pub trust_forwarded_for: Vec<std::net::IpAddr>,
    pub api_rate: RateLimit,
    pub api_max_body: usize,
}

/// `redis_url` in the file: one Redis, or the shards in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RedisUrls {
    One(String),
    Shards(Vec<String>),
}

/// The Redis the instances share (`--redis-url`).
#[derive(Clone)]
pub struct RedisSettings {
    /// The shards, in order (one for an unsharded bus).
    pub urls: Vec<String>,
    /// Entries kept per channel's history (approximately: trimmed with `MAXLEN ~`).
    pub history_len: usize,
    /// How long a channel's history outlives its last message.
    pub history_ttl: Duration,
}

impl std::fmt::Debug for RedisSettings {
    /// Without the URL, which may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("history_len", &self.history_len)
            .field("history_ttl", &self.history_ttl)
            .finish_non_exhaustive()
    }
}

/// Everything resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub path: String,
    pub dev: bool,
    pub dev_key: PathBuf,
    /// Files served under `/app/`.
    pub static_dir: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub azps: Vec<String>,
    pub any_audience: bool,
    pub allowed_origins: Vec<String>,
    pub authorize: Option<Authorize>,
    pub api_key: Option<String>,
    pub api_listen: Option<String>,
    pub relay: Vec<String>,
    pub log_json: bool,
    pub shutdown_grace: Duration,
    pub http: HttpLimits,
    /// The shared bus; `None`: this instance alone.
    pub redis: Option<RedisSettings>,
    /// Hubs, one per thread (`--threads`).
    pub threads: usize,
    /// Entries kept per channel's history by the bus in the process (with more than one
    /// thread and no Redis), and how long after its last message.
    pub history_len: usize,
    pub history_ttl: Duration,
    /// `--test-hooks`.
    pub test_hooks: bool,
    pub hub: HubConfig,
}

impl Settings {
    /// Resolves flags and environment over the file over the defaults.
    pub fn resolve(args: Args) -> Result<Settings, String> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let duration = |flag: Option<Duration>,
                        file: &Option<String>,
                        default: Duration|
         -> Result<Duration, String> {
            match (flag, file) {
                (Some(d), _) => Ok(d),
                (None, Some(text)) => parse_duration(text),
                (None, None) => Ok(default),
            }
        };
        let list = |flag: Vec<String>, file: Vec<String>| if flag.is_empty() { file } else { flag };
        let dev = args.dev || file.dev.unwrap_or(false);
        let defaults = HubConfig::default();
        let mut hub = HubConfig {
            heartbeat_interval: duration(
                args.heartbeat_interval,
                &file.heartbeat_interval,
                defaults.heartbeat_interval,
            )?,
            max_missed_pongs: args
                .max_missed_pongs
                .or(file.max_missed_pongs)
                .unwrap_or(defaults.max_missed_pongs),
            resume_window: duration(
                args.resume_window,
                &file.resume_window,
                defaults.resume_window,
            )?,
            max_frame_bytes: args
                .max_message_size
                .or(file.max_message_size)
                .unwrap_or(defaults.max_frame_bytes),
            shutdown_spread: duration(
                args.shutdown_spread,
                &file.shutdown_spread,
                defaults.shutdown_spread,
            )?,
            clock_leeway: duration(args.clock_leeway, &file.clock_leeway, defaults.clock_leeway)?,
            max_message_bytes: args
                .max_outgoing_message_size
                .or(file.max_outgoing_message_size)
                .unwrap_or(defaults.max_message_bytes),
            max_sessions_per_user: args
                .max_sessions_per_user
                .or(file.max_sessions_per_user)
                .unwrap_or(defaults.max_sessions_per_user),
            ..defaults
        };
        if let Some(prefix) = args.channel_prefix.or(file.channel_prefix) {
            if prefix.contains(['{', '}']) {
                return Err(format!(
                    "--channel-prefix {prefix:?}: no braces (they delimit the channel in its name)"
                ));
            }
            hub.channel_prefix = prefix;
        }
        hub.bus.linger = duration(args.bus_linger, &file.bus_linger, hub.bus.linger)?;
        let file_urls = match file.redis_url {
            Some(RedisUrls::One(url)) => vec![url],
            Some(RedisUrls::Shards(urls)) => urls,
            None => Vec::new(),
        };
        let mut urls = list(args.redis_url, file_urls);
        urls.retain(|url| !url.is_empty());
        let history_len = args.history_len.or(file.history_len).unwrap_or(1000);
        let history_ttl = duration(args.history_ttl, &file.history_ttl, Duration::from_secs(3600))?;
        if history_len == 0 || history_ttl < Duration::from_secs(1) {
            return Err(
                "--history-len and --history-ttl must be at least 1 and 1s: publishes are retried against the history"
                    .into(),
            );
        }
        let redis = if urls.is_empty() {
            None
        } else {
            for url in &urls {
                crate::redis::check_url(url).map_err(|e| format!("--redis-url: {e}"))?;
            }
            if urls.len() > 64 {
                return Err("--redis-url: at most 64 shards".into());
            }
            hub.bus.shared = true;
            hub.bus.shards = urls.len();
            Some(RedisSettings { urls, history_len, history_ttl })
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = args.threads.or(file.threads).unwrap_or(cores);
        if !(1..=1024).contains(&threads) {
            return Err(format!("--threads {threads}: between 1 and 1024"));
        }
        // More than one hub: they share a bus, Redis or the one in the process.
        hub.bus.shared |= threads > 1;
        hub.connection_rate = match (args.connection_rate, &file.connection_rate) {
            (Some(rate), _) => rate,
            (None, Some(text)) => parse_rate(text)?,
            (None, None) => hub.connection_rate,
        };
        let rate_limits = list(args.rate_limits, file.rate_limits);
        if !rate_limits.is_empty() {
            hub.type_rates = rate_limits
                .iter()
                .map(|item| {
                    let (ty, rate) = item
                        .split_once('=')
                        .ok_or(format!("rate limit {item:?}: expected TYPE=N/DURATION"))?;
                    Ok((ty.to_owned(), parse_rate(rate)?))
                })
                .collect::<Result<_, String>>()?;
        }
        let mut relay = list(args.relay, file.relay);
        if dev && relay.is_empty() {
            relay.push("data.*".to_owned());
        }
        hub.validate().map_err(|e| e.to_string())?;

        let issuers = list(args.issuers, file.issuers);
        let audiences = list(args.audiences, file.audiences);
        let azps = list(args.azps, file.azps);
        let any_audience = args.any_audience || file.any_audience.unwrap_or(false);
        let roles = list(args.authorize_roles, file.authorize_roles);
        let claim = args.authorize_claim.or(file.authorize_claim);
        let url = args.authorize_url.or(file.authorize_url);
        let named = args.authorize.or(file.authorize);
        let authorize = match (named.as_deref(), claim.is_some() || !roles.is_empty(), url) {
            (Some("allow-all"), false, None) => Some(Authorize::AllowAll),
            (Some(other), false, None) => {
                return Err(format!(
                    "--authorize {other:?}: the only named authorizer is allow-all"
                ));
            }
            (Some(_), _, _) | (None, true, Some(_)) => {
                return Err("choose one authorizer: --authorize allow-all, the claim rule (--authorize-claim/--authorize-role) or --authorize-url".into());
            }
            (None, true, None) => Some(Authorize::Claims { claim, roles }),
            (None, false, Some(url)) => {
                Some(Authorize::Callback(crate::authorize::CallbackConfig {
                    url,
                    timeout: duration(
                        args.authorize_timeout,
                        &file.authorize_timeout,
                        Duration::from_secs(2),
                    )?,
                    cache_ttl: duration(
                        args.authorize_cache_ttl,
                        &file.authorize_cache_ttl,
                        Duration::from_secs(10),
                    )?,
                    concurrency: args
                        .authorize_concurrency
                        .or(file.authorize_concurrency)
                        .unwrap_or(32),
                }))
            }
            (None, false, None) if dev => Some(Authorize::AllowAll),
            (None, false, None) => None,
        };
        // Safe defaults outside dev mode: nothing is accepted by omission.
        if !dev {
            if issuers.is_empty() {
                return Err("no --issuer: name the issuer your tokens carry (their `iss`), e.g. --issuer https://sso.example/realms/agents".into());
            }
            if audiences.is_empty() && azps.is_empty() && !any_audience {
                return Err("no --audience or --azp: name the audience (or authorized party) your tokens are for, or pass --any-audience if the issuer serves only this application".into());
            }
            if authorize.is_none() {
                return Err("no authorizer: say who may join which conversation with --authorize-url URL (the backend decides), --authorize-claim CLAIM / --authorize-role ROLE (the token says), or --authorize allow-all (anyone authenticated may join any conversation)".into());
            }
        }
        let defaults_http = HttpLimits {
            header_timeout: Duration::from_secs(10),
            max_pending_upgrades: 4096,
            max_sockets_per_ip: 1024,
            trust_forwarded_for: Vec::new(),
            api_rate: RateLimit::new(10_000, Duration::from_secs(1)),
            api_max_body: 1 << 20,
        };
        let http = HttpLimits {
            header_timeout: duration(
                args.header_timeout,
                &file.header_timeout,
                defaults_http.header_timeout,
            )?,
            max_pending_upgrades: args
                .max_pending_upgrades
                .or(file.max_pending_upgrades)
                .unwrap_or(defaults_http.max_pending_upgrades),
            max_sockets_per_ip: args
                .max_sockets_per_ip
                .or(file.max_sockets_per_ip)
                .unwrap_or(defaults_http.max_sockets_per_ip),
            trust_forwarded_for: if args.trust_forwarded_for.is_empty() {
                file.trust_forwarded_for
            } else {
                args.trust_forwarded_for
            },
            api_rate: match (args.api_rate, &file.api_rate) {
                (Some(rate), _) => rate,
                (None, Some(text)) => parse_rate(text)?,
                (None, None) => defaults_http.api_rate,
            },
            api_max_body: args
                .api_max_body
                .or(file.api_max_body)
                .unwrap_or(defaults_http.api_max_body),
        };
        if http.header_timeout.is_zero() || http.max_pending_upgrades == 0 {
            return Err("--header-timeout and --max-pending-upgrades must be positive".into());
        }
        Ok(Settings {
            listen: args.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
            path: args.path.or(file.path).unwrap_or_else(|| "/ws".to_owned()),
            dev,
            dev_key: args
                .dev_key
                .or(file.dev_key)
                .unwrap_or_else(crate::auth::dev::default_key_path),
            static_dir: args.static_dir.or(file.static_dir).or_else(|| {
                let built = PathBuf::from("adapter-wasm/dist");
                (dev && built.is_dir()).then_some(built)
            }),
            jwks_file: args.jwks_file.or(file.jwks_file),
            jwks_url: args.jwks_url.or(file.jwks_url),
            issuers,
            audiences,
            azps,
            any_audience,
            allowed_origins: list(args.allowed_origins, file.allowed_origins),
            authorize,
            api_key: args.api_key.or(file.api_key).filter(|k| !k.is_empty()),
            api_listen: args.api_listen.or(file.api_listen),
            relay,
            log_json: args.log_json || file.log_json.unwrap_or(false),
            shutdown_grace: duration(
                args.shutdown_grace,
                &file.shutdown_grace,
                Duration::from_secs(10),
            )?,
            http,
            redis,
            threads,
            history_len,
            history_ttl,
            test_hooks: args.test_hooks || file.test_hooks.unwrap_or(false),
            hub,
        })
    }
}

/// `250ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration (try 30s)"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    })
}

/// `N/DURATION`, e.g. `10/60s`.
pub fn parse_rate(text: &str) -> Result<RateLimit, String> {
    let (n, per) =
        text.split_once('/').ok_or(format!("{text:?}: expected N/DURATION, e.g. 10/60s"))?;
    let capacity = n.trim().parse().map_err(|_| format!("{text:?}: {n:?} is not a count"))?;
    Ok(RateLimit::new(capacity, parse_duration(per)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2 weeks").is_err());
        assert_eq!(parse_rate("10/60s"), Ok(RateLimit::new(10, Duration::from_secs(60))));
        assert!(parse_rate("10").is_err());
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let dir = std::env::temp_dir().join(format!("switchboard-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("switchboard.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\nheartbeat_interval = \"10s\"\nrelay = [\"data.chat.*\"]\nissuers = [\"https://sso.test/realms/a\"]\nany_audience = true\nauthorize = \"allow-all\"\n",
        )
        .unwrap();
        let args = Args::parse_from([
            "switchboard",
            "--config",
            path.to_str().unwrap(),
            "--heartbeat-interval",
            "5s",
        ]);
        let settings = Settings::resolve(args).unwrap();
        assert_eq!(settings.listen, "0.0.0.0:9000");
        assert_eq!(settings.hub.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(settings.relay, ["data.chat.*"]);
        assert_eq!(settings.path, "/ws");
        assert_eq!(settings.hub.resume_window, Duration::from_secs(120));
        assert_eq!(settings.authorize, Some(Authorize::AllowAll));
    }

    #[test]
    fn a_redis_url_makes_the_bus_shared() {
        let dev = |args: &[&str]| {
            let mut all = vec!["switchboard", "--dev"];
            all.extend_from_slice(args);
            Settings::resolve(Args::parse_from(all))
        };
        let alone = dev(&["--threads", "1"]).unwrap();
        assert!(alone.redis.is_none() && !alone.hub.bus.shared, "one hub alone: no bus");
        assert_eq!(alone.hub.channel_prefix, "sb:");
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(dev(&[]).unwrap().threads, cores, "a hub per core by default");
        let threads = dev(&["--threads", "3"]).unwrap();
        assert!(threads.redis.is_none() && threads.hub.bus.shared, "hubs share the process's bus");
        assert_eq!((threads.history_len, threads.history_ttl), (1000, Duration::from_secs(3600)));
        assert!(dev(&["--threads", "0"]).unwrap_err().contains("--threads"));
        let shared = dev(&[
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--history-len",
            "50",
            "--history-ttl",
            "10m",
            "--bus-linger",
            "1s",
            "--channel-prefix",
            "app:",
        ])
        .unwrap();
        assert!(shared.hub.bus.shared);
        let redis = shared.redis.unwrap();
        assert_eq!((redis.history_len, redis.history_ttl), (50, Duration::from_secs(600)));
        assert_eq!(shared.hub.bus.linger, Duration::from_secs(1));
        assert_eq!(shared.hub.channel_prefix, "app:");
        assert!(!format!("{redis:?}").contains("6379"), "the URL (maybe a password) is not logged");
        assert!(dev(&["--redis-url", "http://example.com"]).unwrap_err().contains("--redis-url"));
        assert_eq!(shared.hub.bus.shards, 1);
        let sharded = dev(&["--redis-url", "redis://127.0.0.1:1", "--redis-url", "redis://a:2"]);
        let sharded = sharded.unwrap();
        assert_eq!(sharded.hub.bus.shards, 2);
        assert_eq!(sharded.redis.unwrap().urls, ["redis://127.0.0.1:1", "redis://a:2"]);
        assert!(dev(&["--channel-prefix", "a{b"]).unwrap_err().contains("braces"));
        let no_history = dev(&["--redis-url", "redis://127.0.0.1", "--history-len", "0"]);
        assert!(no_history.unwrap_err().contains("--history-len"));
    }

    #[test]
    fn unsafe_settings_are_refused_with_the_flag_to_add() {
        let resolve = |args: &[&str]| {
            let mut all = vec!["switchboard"];
            all.extend_from_slice(args);
            Settings::resolve(Args::parse_from(all))
        };
        assert!(resolve(&[]).unwrap_err().contains("--issuer"));
        assert!(resolve(&["--issuer", "i"]).unwrap_err().contains("--any-audience"));
        assert!(resolve(&["--issuer", "i", "--azp", "a"]).unwrap_err().contains("--authorize-url"));
        let claims = resolve(&["--issuer", "i", "--azp", "a", "--authorize-claim", "c"]).unwrap();
        assert_eq!(
            claims.authorize,
            Some(Authorize::Claims { claim: Some("c".into()), roles: vec![] })
        );
        assert!(resolve(&["--issuer", "i", "--azp", "a", "--authorize", "everyone"]).is_err());
        assert!(
            resolve(&[
                "--issuer",
                "i",
                "--azp",
                "a",
                "--authorize",
                "allow-all",
                "--authorize-role",
                "r"
            ])
            .is_err(),
            "one authorizer at a time"
        );
        let dev = resolve(&["--dev"]).unwrap();
        assert_eq!(dev.authorize, Some(Authorize::AllowAll), "dev mode lets everyone in");
        assert!(
            resolve(&["--dev", "--max-outgoing-message-size", "999999999"])
                .unwrap_err()
                .contains("max_message_bytes")
        );
    }
}
