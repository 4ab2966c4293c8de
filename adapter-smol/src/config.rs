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
    /// Client message types re-broadcast to the sender's conversation (repeatable patterns
    /// such as `data.*`; on as `data.*` in dev mode).
    #[arg(long = "relay", env = "SWITCHBOARD_RELAY", value_delimiter = ',')]
    pub relay: Vec<String>,
    /// Log lines as JSON.
    #[arg(long, env = "SWITCHBOARD_LOG_JSON")]
    pub log_json: bool,
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
}

/// Everything resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub path: String,
    pub dev: bool,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub azps: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub api_key: Option<String>,
    pub relay: Vec<String>,
    pub log_json: bool,
    pub shutdown_grace: Duration,
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
            ..defaults
        };
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
        Ok(Settings {
            listen: args.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
            path: args.path.or(file.path).unwrap_or_else(|| "/ws".to_owned()),
            dev,
            jwks_file: args.jwks_file.or(file.jwks_file),
            jwks_url: args.jwks_url.or(file.jwks_url),
            issuers: list(args.issuers, file.issuers),
            audiences: list(args.audiences, file.audiences),
            azps: list(args.azps, file.azps),
            allowed_origins: list(args.allowed_origins, file.allowed_origins),
            api_key: args.api_key.or(file.api_key).filter(|k| !k.is_empty()),
            relay,
            log_json: args.log_json || file.log_json.unwrap_or(false),
            shutdown_grace: duration(
                args.shutdown_grace,
                &file.shutdown_grace,
                Duration::from_secs(10),
            )?,
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
            "listen = \"0.0.0.0:9000\"\nheartbeat_interval = \"10s\"\nrelay = [\"data.chat.*\"]\n",
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
    }
}
