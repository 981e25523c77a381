//! Configuration: the TOML schema, the compiled-in default, overlaying a file, validation.
//! The only module that reads environment variables. Knows nothing of rooms or media.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `config/default.toml`, compiled in so the binary runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Environment variable that overrides `log.filter`.
const LOG_ENV: &str = "KURSRELAY_LOG";
/// Environment variable that overrides `auth.admin_key` (keep secrets out of files).
const ADMIN_KEY_ENV: &str = "KURSRELAY_ADMIN_KEY";
/// Environment variable that overrides `turn.secret`.
const TURN_SECRET_ENV: &str = "KURSRELAY_TURN_SECRET";
/// Environment variable that overrides `cluster.secret`.
const CLUSTER_SECRET_ENV: &str = "KURSRELAY_CLUSTER_SECRET";
/// The shortest `cluster.secret` accepted.
const MIN_CLUSTER_SECRET: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin} is not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("unknown key `{key}` in {origin}")]
    UnknownKey { key: String, origin: String },
    #[error("bad value for `{key}`: {message}")]
    BadValue { key: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub web: WebConfig,
    pub media: MediaConfig,
    pub signalling: SignallingConfig,
    pub auth: AuthConfig,
    pub turn: TurnConfig,
    pub db: DbConfig,
    pub attendance: AttendanceConfig,
    pub abuse: AbuseConfig,
    pub log: LogConfig,
    pub cluster: ClusterConfig,
}

/// This server as one node of several sharing a PostgreSQL store (issue 22). `node_id` empty:
/// a single server, and nothing of this runs.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique in the region (letters, digits, `.`, `_`, `-`; ≤ 64).
    pub node_id: String,
    /// Where the other nodes reach this one (`http://10.1.2.3:8081`), written in its heartbeat.
    pub internal_url: String,
    /// How long a session's lease lasts without renewal: another node may take the session
    /// over this long after the owner stopped renewing.
    pub lease_ms: u64,
    /// How often the node writes its heartbeat and renews its leases.
    pub renew_interval_ms: u64,
    /// Shared by every node of the region: a node accepts another's forwarded signalling
    /// (`/cluster/ws`) only with it. 32+ characters.
    pub secret: String,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("internal_url", &self.internal_url)
            .field("lease_ms", &self.lease_ms)
            .field("renew_interval_ms", &self.renew_interval_ms)
            .field("secret", &secret_shown(&self.secret, "(none)"))
            .finish()
    }
}

/// What `Debug` shows of a secret: whether it is set, never the secret itself.
fn secret_shown(secret: &str, unset: &'static str) -> &'static str {
    if secret.is_empty() {
        unset
    } else {
        "(set)"
    }
}

impl ClusterConfig {
    /// True when this server is one node of several.
    pub fn enabled(&self) -> bool {
        !self.node_id.is_empty()
    }
}

/// Limits per client address against guessing and floods (`http::guard`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbuseConfig {
    /// Bad join tokens or admin keys an address may send before it is slowed and refused.
    pub auth_failures: u32,
    /// How fast failures are forgiven (a leaky bucket).
    pub auth_failures_forgiven_per_minute: u64,
    /// How long a bad credential from an address over budget waits before its refusal.
    pub penalty_ms: u64,
    /// WebSocket connections one address may hold open at once.
    pub websockets_per_address: u32,
}

/// TURN servers handed to clients, with time-limited credentials made from the shared secret
/// (coturn's `use-auth-secret`, the "TURN REST API" scheme).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnConfig {
    pub urls: Vec<String>,
    pub secret: String,
    pub credential_lifetime_hours: u64,
    pub relay_only: bool,
}

impl TurnConfig {
    pub fn credential_lifetime(&self) -> Duration {
        Duration::from_secs(self.credential_lifetime_hours * 3600)
    }
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("secret", &secret_shown(&self.secret, "(none)"))
            .field("credential_lifetime_hours", &self.credential_lifetime_hours)
            .field("relay_only", &self.relay_only)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttendanceConfig {
    pub threshold_percent: f64,
    pub retention_days: u64,
    pub seen_interval_ms: u64,
    pub retention_check_minutes: u64,
    /// Local time of the CSV export, a name from the system's zone database.
    pub time_zone: String,
}

impl AttendanceConfig {
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_days * 86_400)
    }
    pub fn seen_interval(&self) -> Duration {
        Duration::from_millis(self.seen_interval_ms)
    }
    pub fn retention_check(&self) -> Duration {
        Duration::from_secs(self.retention_check_minutes * 60)
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub admin_key: String,
    pub link_validity_hours: u64,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("admin_key", &secret_shown(&self.admin_key, "(off)"))
            .field("link_validity_hours", &self.link_validity_hours)
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    /// The SQLite file, when `url` is empty.
    pub path: PathBuf,
    /// Empty: SQLite at `path`. `postgres://…` (or `postgresql://…`): the PostgreSQL database
    /// several nodes share. `sqlite:FILE`: SQLite at FILE.
    pub url: String,
}

/// By hand, so a password in `url` never reaches a debug print.
impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("path", &self.path)
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

/// Where the database is, from `db.url` / `db.path`.
#[derive(Clone, PartialEq, Eq)]
pub enum DbLocation {
    Sqlite(PathBuf),
    /// The full URL (it may hold a password: never print it; `redact_url` does).
    Postgres(String),
}

impl std::fmt::Debug for DbLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbLocation::Sqlite(p) => write!(f, "Sqlite({})", p.display()),
            DbLocation::Postgres(u) => write!(f, "Postgres({})", redact_url(u)),
        }
    }
}

impl DbConfig {
    /// The database this configuration names; a bad `db.url` is an error naming the key.
    pub fn location(&self) -> Result<DbLocation, ConfigError> {
        let url = self.url.trim();
        if url.is_empty() {
            return Ok(DbLocation::Sqlite(self.path.clone()));
        }
        let bad = |message: String| ConfigError::BadValue {
            key: "db.url".into(),
            message,
        };
        if let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        {
            // Host (or a socket folder in `?host=`) and database must be there; sqlx would
            // otherwise fall back to environment variables, which config.rs alone reads.
            let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit('@').next().unwrap_or("");
            let database = tail.split('?').next().unwrap_or("");
            if (host.is_empty() && !tail.contains("host=")) || database.is_empty() {
                return Err(bad(format!(
                    "{} must name a server and a database, like postgres://kursrelay@db.example:5432/kursrelay",
                    redact_url(url)
                )));
            }
            return Ok(DbLocation::Postgres(url.to_owned()));
        }
        if let Some(file) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if file.is_empty() || file.contains('?') {
                return Err(bad(
                    "a sqlite: URL needs a file name and no options, like sqlite:data/kursrelay.db"
                        .into(),
                ));
            }
            return Ok(DbLocation::Sqlite(PathBuf::from(file)));
        }
        Err(bad(format!(
            "{} is not a database URL: use postgres://… for PostgreSQL, or leave it empty for SQLite at db.path",
            redact_url(url)
        )))
    }
}

/// A database URL without its password (`postgres://user:***@host/db`), for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    // A password may also come as a query parameter.
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Empty: the web client compiled into the binary. A folder: served from disk instead
    /// (for working on web/ without rebuilding).
    pub web_root: PathBuf,
    pub public_url: String,
    /// PEM certificate chain and private key; both empty = plain HTTP.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Where to answer plain HTTP with a redirect to `public_url`; empty = off.
    pub redirect_listen: String,
    /// Reverse proxies (addresses or CIDR networks) whose `X-Forwarded-For` / `X-Real-IP`
    /// name the client. Empty: the peer address is the client.
    pub trusted_proxies: Vec<String>,
}

impl HttpConfig {
    /// Certificate and key files, if HTTPS is on (validated: both or neither).
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        if self.tls_cert.as_os_str().is_empty() {
            None
        } else {
            Some((&self.tls_cert, &self.tls_key))
        }
    }

    /// The redirect listener's address, if one is configured (validated).
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect_listen.parse().ok()
    }
}

/// What the web client is told (`/client-config.json`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    pub help_phone: String,
    /// The hospital's name in the page header (optional).
    pub brand_name: String,
    /// A logo served by this server, e.g. "/brand/logo.svg" in web_root (optional).
    pub brand_logo: String,
    /// The accent colour of buttons and links, "#rrggbb" (optional; contrast is checked).
    pub accent: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    pub bind_ips: Vec<IpAddr>,
    /// The one UDP port (and ICE-TCP port) of all media; 0 takes any free port (tests).
    pub udp_port: u16,
    /// Addresses advertised to clients instead of the bound ones (1:1 NAT).
    pub public_ips: Vec<IpAddr>,
    /// Which ICE transports clients are offered: "udp" and/or "tcp" (ICE-TCP, passive, on the
    /// same port number).
    pub transports: Vec<String>,
    pub ice_disconnected_timeout_ms: u64,
    pub ice_failed_timeout_ms: u64,
    pub keyframe_request_interval_ms: u64,
    /// Accept simulcast publishing (`joined.simulcast` tells clients). Defaults to on for
    /// configuration files written before the key existed.
    #[serde(default = "default_on")]
    pub simulcast: bool,
    /// Pace each viewer's video to what its line carries (`sfu::engine::pacer`). On by
    /// default, also for configuration files written before the key existed; off sends every
    /// packet as it arrives (as before the pacer: for a comparison, or a network of only LANs).
    #[serde(default = "default_on")]
    pub pacer: bool,
    /// Probe a viewer's line with padding before a step up to a higher layer (`sfu::probe`).
    /// On by default, also for configuration files written before the key existed; off tries
    /// each step up with the layer itself (for a comparison).
    #[serde(default = "default_on")]
    pub probes: bool,
}

fn default_on() -> bool {
    true
}

impl MediaConfig {
    pub fn ice_disconnected_timeout(&self) -> Duration {
        Duration::from_millis(self.ice_disconnected_timeout_ms)
    }
    pub fn ice_failed_timeout(&self) -> Duration {
        Duration::from_millis(self.ice_failed_timeout_ms)
    }
    pub fn keyframe_request_interval(&self) -> Duration {
        Duration::from_millis(self.keyframe_request_interval_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignallingConfig {
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub message_burst: u32,
    /// How long a subscribe offer may wait for its answer before it is sent again; the third
    /// time in a row the client is removed.
    pub answer_timeout_ms: u64,
    /// The server pings every socket this often (browsers and WebSocket libraries answer on
    /// their own)…
    pub ping_interval_ms: u64,
    /// …and closes one it has heard nothing from (no frame, no pong) for this long: a member
    /// whose connection died without a word is counted as dropped, not left listed.
    pub idle_timeout_ms: u64,
}

impl SignallingConfig {
    pub fn answer_timeout(&self) -> Duration {
        Duration::from_millis(self.answer_timeout_ms)
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub filter: String,
    pub format: LogFormat,
}

/// How log lines look: `text` for people, `json` (one object per line) for journald/Loki.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The built-in default, validated.
    pub fn default_config() -> Result<Config, ConfigError> {
        Self::from_overlay(None)
    }

    /// The built-in default overlaid with `path` (if any), then environment overrides, validated.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let overlay = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Some((text, path.display().to_string()))
            }
            None => None,
        };
        let mut config =
            Self::from_overlay(overlay.as_ref().map(|(t, o)| (t.as_str(), o.as_str())))?;
        if let Ok(filter) = std::env::var(LOG_ENV) {
            config.log.filter = filter;
        }
        if let Ok(key) = std::env::var(ADMIN_KEY_ENV) {
            config.auth.admin_key = key;
        }
        if let Ok(secret) = std::env::var(TURN_SECRET_ENV) {
            config.turn.secret = secret;
        }
        if let Ok(secret) = std::env::var(CLUSTER_SECRET_ENV) {
            config.cluster.secret = secret;
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses the default, overlays `overlay` (TOML text and where it came from), validates.
    pub fn from_overlay(overlay: Option<(&str, &str)>) -> Result<Config, ConfigError> {
        let mut merged = parse_table(DEFAULT_TOML, "the built-in default")?;
        if let Some((text, origin)) = overlay {
            let top = parse_table(text, origin)?;
            merge(&mut merged, top, "", origin)?;
        }
        let de = toml::Value::Table(merged);
        let config: Config =
            serde_path_to_error::deserialize(de).map_err(|e| ConfigError::BadValue {
                key: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot.
    fn validate_cluster(&self, db: &DbLocation) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| ConfigError::BadValue {
            key: key.to_owned(),
            message: message.to_owned(),
        };
        let c = &self.cluster;
        if !c.enabled() {
            if !c.secret.is_empty() {
                return Err(bad(
                    "cluster.secret",
                    "is set but cluster.node_id is empty: name this node, or remove the secret for a single server",
                ));
            }
            if !c.internal_url.is_empty() {
                return Err(bad(
                    "cluster.node_id",
                    "is empty while cluster.internal_url is set: name this node, or leave both empty for a single server",
                ));
            }
            return Ok(());
        }
        if c.node_id.len() > 64
            || !c
                .node_id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
        {
            return Err(bad(
                "cluster.node_id",
                "must be 1–64 letters, digits, '.', '_' or '-', like \"molde-1\"",
            ));
        }
        if c.internal_url.starts_with("https://") {
            // The node-to-node signalling client speaks plain WebSocket (no TLS stack of its
            // own); the region's nodes talk over their internal network (README).
            return Err(bad(
                "cluster.internal_url",
                "must be a plain http:// URL on the nodes' internal network (https between nodes is not built), like \"http://10.1.2.3:8081\"",
            ));
        }
        let host = c
            .internal_url
            .strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or(""));
        if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace) || h.contains('@')) {
            return Err(bad(
                "cluster.internal_url",
                "must be the URL other nodes reach this one at, like \"http://10.1.2.3:8081\"",
            ));
        }
        if matches!(db, DbLocation::Sqlite(_)) {
            return Err(bad(
                "cluster.node_id",
                "is set, but several nodes need one shared PostgreSQL store: set db.url = \"postgres://…\"",
            ));
        }
        if c.secret.chars().count() < MIN_CLUSTER_SECRET {
            return Err(bad(
                "cluster.secret",
                "must be the region's shared node secret, at least 32 characters (the same on every node; or KURSRELAY_CLUSTER_SECRET), e.g. from `openssl rand -hex 32`",
            ));
        }
        if c.renew_interval_ms < 100 {
            return Err(bad("cluster.renew_interval_ms", "must be at least 100"));
        }
        if c.lease_ms < 3 * c.renew_interval_ms {
            return Err(bad(
                "cluster.lease_ms",
                "must be at least three renewal intervals (cluster.renew_interval_ms), so one late renewal does not lose a session",
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &str, message: &str) -> ConfigError {
            ConfigError::BadValue {
                key: key.to_owned(),
                message: message.to_owned(),
            }
        }
        if !self.web.accent.is_empty() {
            match hex_colour(&self.web.accent) {
                None => return Err(bad("web.accent", "must be a colour like \"#0a3d8f\"")),
                // White text on the accent, and the accent as text on white: WCAG AA.
                Some(rgb) if contrast_with_white(rgb) < 4.5 => {
                    return Err(bad(
                        "web.accent",
                        "is too light: it needs a contrast of at least 4.5:1 with white",
                    ))
                }
                Some(_) => {}
            }
        }
        if !self.web.brand_logo.is_empty() && !self.web.brand_logo.starts_with('/') {
            return Err(bad(
                "web.brand_logo",
                "must be a path on this server, like \"/brand/logo.svg\"",
            ));
        }
        let db = self.db.location()?;
        self.validate_cluster(&db)?;
        if self.media.bind_ips.is_empty() {
            return Err(bad("media.bind_ips", "needs at least one address"));
        }
        if self.media.transports.is_empty()
            || self
                .media
                .transports
                .iter()
                .any(|t| t != "udp" && t != "tcp")
        {
            return Err(bad(
                "media.transports",
                "must list \"udp\", \"tcp\" or both",
            ));
        }
        if let Some(ip) = self.media.public_ips.iter().find(|ip| ip.is_unspecified()) {
            return Err(bad(
                "media.public_ips",
                &format!("{ip} is not an address clients can reach"),
            ));
        }
        if self.media.ice_disconnected_timeout_ms == 0 || self.media.ice_failed_timeout_ms == 0 {
            return Err(bad("media.ice_*_timeout_ms", "must be above zero"));
        }
        if self.media.keyframe_request_interval_ms == 0 {
            return Err(bad(
                "media.keyframe_request_interval_ms",
                "must be above zero",
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.signalling.max_message_bytes) {
            return Err(bad(
                "signalling.max_message_bytes",
                "must be between 1024 and 1048576",
            ));
        }
        if !(100..=600_000).contains(&self.signalling.answer_timeout_ms) {
            return Err(bad(
                "signalling.answer_timeout_ms",
                "must be between 100 and 600000 (ten minutes)",
            ));
        }
        if !(100..=300_000).contains(&self.signalling.ping_interval_ms) {
            return Err(bad(
                "signalling.ping_interval_ms",
                "must be between 100 and 300000 (five minutes)",
            ));
        }
        if self.signalling.idle_timeout_ms < 2 * self.signalling.ping_interval_ms
            || self.signalling.idle_timeout_ms > 3_600_000
        {
            return Err(bad(
                "signalling.idle_timeout_ms",
                "must be at least twice signalling.ping_interval_ms and at most 3600000 (an hour)",
            ));
        }
        if self.signalling.messages_per_second == 0 || self.signalling.message_burst == 0 {
            return Err(bad("signalling.messages_per_*", "must be above zero"));
        }
        let (cert, key) = (
            self.http.tls_cert.as_os_str().is_empty(),
            self.http.tls_key.as_os_str().is_empty(),
        );
        if cert != key {
            return Err(bad(
                if cert {
                    "http.tls_cert"
                } else {
                    "http.tls_key"
                },
                "HTTPS needs both http.tls_cert and http.tls_key (PEM files), or neither",
            ));
        }
        if !self.http.redirect_listen.is_empty() {
            let Ok(addr) = self.http.redirect_listen.parse::<SocketAddr>() else {
                return Err(bad(
                    "http.redirect_listen",
                    "must be an address with a port, e.g. \"0.0.0.0:80\", or empty",
                ));
            };
            if self.http.tls_files().is_none() {
                return Err(bad(
                    "http.redirect_listen",
                    "redirects to HTTPS, so it needs http.tls_cert and http.tls_key",
                ));
            }
            if addr == self.http.listen && addr.port() != 0 {
                return Err(bad("http.redirect_listen", "must differ from http.listen"));
            }
        }
        for proxy in &self.http.trusted_proxies {
            if Cidr::parse(proxy).is_none() {
                return Err(bad(
                    "http.trusted_proxies",
                    &format!("{proxy:?} is not an address or network like \"127.0.0.1/32\""),
                ));
            }
        }
        if self.abuse.auth_failures == 0
            || self.abuse.auth_failures_forgiven_per_minute == 0
            || self.abuse.websockets_per_address == 0
        {
            return Err(bad("abuse.*", "must be above zero"));
        }
        if self.abuse.penalty_ms > 60_000 {
            return Err(bad("abuse.penalty_ms", "must be at most 60000 (a minute)"));
        }
        for url in &self.turn.urls {
            if !(url.starts_with("turn:") || url.starts_with("turns:") || url.starts_with("stun:"))
            {
                return Err(bad(
                    "turn.urls",
                    &format!("{url:?} must start with turn:, turns: or stun:"),
                ));
            }
        }
        let has_turn = self.turn.urls.iter().any(|u| u.starts_with("turn"));
        if has_turn && self.turn.secret.len() < 16 {
            return Err(bad(
                "turn.secret",
                "TURN servers need the shared secret of coturn's static-auth-secret (16+ characters; \
                 set KURSRELAY_TURN_SECRET)",
            ));
        }
        if !has_turn && !self.turn.secret.is_empty() {
            return Err(bad(
                "turn.urls",
                "turn.secret is set but no turn: or turns: URL is",
            ));
        }
        if self.turn.relay_only && !has_turn {
            return Err(bad(
                "turn.relay_only",
                "needs at least one turn: or turns: URL",
            ));
        }
        if has_turn && !(1..=48).contains(&self.turn.credential_lifetime_hours) {
            return Err(bad(
                "turn.credential_lifetime_hours",
                "must be between 1 and 48",
            ));
        }
        if self
            .log
            .filter
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(bad("log.filter", "is not a valid tracing filter"));
        }
        Ok(())
    }
}

/// `#rrggbb` as three channels.
fn hex_colour(s: &str) -> Option<[u8; 3]> {
    let hex = s.strip_prefix('#').filter(|h| h.len() == 6)?;
    let channel = |i: usize| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok();
    Some([channel(0)?, channel(2)?, channel(4)?])
}

/// WCAG contrast ratio between a colour and white.
fn contrast_with_white(rgb: [u8; 3]) -> f64 {
    let linear = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.03928 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let l = 0.2126 * linear(rgb[0]) + 0.7152 * linear(rgb[1]) + 0.0722 * linear(rgb[2]);
    1.05 / (l + 0.05)
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string(),
        })
}

/// Overlays `top` onto `base` key by key. A key the default does not have is an error: the
/// default file lists every key there is, so a typo cannot pass silently.
fn merge(
    base: &mut toml::Table,
    top: toml::Table,
    prefix: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    for (key, value) in top {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (base.get_mut(&key), value) {
            (None, _) => {
                return Err(ConfigError::UnknownKey {
                    key: path,
                    origin: origin.to_owned(),
                })
            }
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t, &path, origin)?,
            (Some(toml::Value::Table(_)), _) => {
                return Err(ConfigError::BadValue {
                    key: path,
                    message: "must be a table".to_owned(),
                })
            }
            (Some(slot), value) => *slot = value,
        }
    }
    Ok(())
}

/// An IPv4 network or IPv6 prefix (`http.trusted_proxies`), e.g. `127.0.0.1/32`, `10.0.0.0/8`, `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `v6/n`, or a bare address (a single host).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { net: ip, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        let c = Config::default_config().expect("default config");
        assert_eq!(
            c.http.listen,
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.signalling.max_message_bytes, 65536);
    }

    #[test]
    fn example_file_matches_the_default() {
        // example.toml documents every key with its default value.
        let example = include_str!("../config/example.toml");
        let a = parse_table(example, "example").unwrap();
        let b = parse_table(DEFAULT_TOML, "default").unwrap();
        assert_eq!(a, b, "config/example.toml and config/default.toml disagree");
    }

    #[test]
    fn overlay_changes_only_given_keys() {
        let c = Config::from_overlay(Some(("[http]\nlisten = \"127.0.0.1:9000\"\n", "t"))).unwrap();
        assert_eq!(c.http.listen.port(), 9000);
        assert_eq!(
            c.http.web_root,
            PathBuf::new(),
            "the built-in web client by default"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[http]\nlisten_port = 1\n", "http.listen_port"),
            ("[httpx]\n", "httpx"),
            ("[http]\nlisten = \"nonsense\"\n", "http.listen"),
            ("[media]\nudp_port = \"many\"\n", "media.udp_port"),
            ("[media]\nudp_port = 70000\n", "media.udp_port"),
            ("[media]\ntransports = [\"sctp\"]\n", "media.transports"),
            ("[media]\ntransports = []\n", "media.transports"),
            ("[media]\npublic_ips = [\"0.0.0.0\"]\n", "media.public_ips"),
            ("[media]\nbind_ips = []\n", "media.bind_ips"),
            (
                "[signalling]\nmax_message_bytes = 1\n",
                "signalling.max_message_bytes",
            ),
            (
                "[signalling]\nping_interval_ms = 10\n",
                "signalling.ping_interval_ms",
            ),
            (
                "[signalling]\nping_interval_ms = 20000\nidle_timeout_ms = 30000\n",
                "signalling.idle_timeout_ms",
            ),
            ("http = 3\n", "http"),
            ("[web]\naccent = \"blue\"\n", "web.accent"),
            ("[web]\naccent = \"#ffd400\"\n", "web.accent"),
            (
                "[web]\nbrand_logo = \"https://x/logo.png\"\n",
                "web.brand_logo",
            ),
            ("[attendance]\ntime_zone = 3\n", "attendance.time_zone"),
            ("[http]\ntls_cert = \"a.pem\"\n", "http.tls_key"),
            ("[http]\ntls_key = \"k.pem\"\n", "http.tls_cert"),
            ("[http]\nredirect_listen = \"80\"\n", "http.redirect_listen"),
            ("[http]\nredirect_listen = \"0.0.0.0:80\"\n", "http.redirect_listen"),
            (
                "[http]\ntls_cert = \"c\"\ntls_key = \"k\"\nredirect_listen = \"127.0.0.1:8080\"\n",
                "http.redirect_listen",
            ),
            ("[turn]\nurls = [\"http://x\"]\n", "turn.urls"),
            ("[turn]\nurls = [\"turn:t.example:3478\"]\n", "turn.secret"),
            (
                "[turn]\nurls = [\"turn:t.example:3478\"]\nsecret = \"short\"\n",
                "turn.secret",
            ),
            ("[turn]\nsecret = \"0123456789abcdef0\"\n", "turn.urls"),
            ("[turn]\nrelay_only = true\n", "turn.relay_only"),
            (
                "[turn]\nurls = [\"turns:t.example:443\"]\nsecret = \"0123456789abcdef0\"\ncredential_lifetime_hours = 0\n",
                "turn.credential_lifetime_hours",
            ),
            ("[log]\nformat = \"xml\"\n", "log.format"),
        ];
        for (text, key) in cases {
            let err = Config::from_overlay(Some((text, "test.toml"))).unwrap_err();
            assert!(err.to_string().contains(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn accent_contrast() {
        assert!(contrast_with_white([0x0a, 0x3d, 0x8f]) > 10.0);
        assert!(contrast_with_white([0xff, 0xd4, 0x00]) < 2.0);
        let ok = Config::from_overlay(Some(("[web]\naccent = \"#005a3c\"\n", "t"))).unwrap();
        assert_eq!(ok.web.accent, "#005a3c");
    }

    #[test]
    fn https_and_turn_settings_are_accepted() {
        let c = Config::from_overlay(Some((
            "[http]\ntls_cert = \"/etc/k/cert.pem\"\ntls_key = \"/etc/k/key.pem\"\nredirect_listen = \"0.0.0.0:80\"\n\
             [turn]\nurls = [\"turns:turn.example:443?transport=tcp\", \"turn:turn.example:3478\"]\n\
             secret = \"0123456789abcdef0\"\nrelay_only = true\n[log]\nformat = \"json\"\n",
            "t",
        )))
        .unwrap();
        assert!(c.http.tls_files().is_some());
        assert_eq!(c.http.redirect_addr().unwrap().port(), 80);
        assert_eq!(c.turn.credential_lifetime(), Duration::from_secs(12 * 3600));
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(
            !format!("{:?}", c.turn).contains("0123456789"),
            "secret in Debug"
        );
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = Config::from_overlay(Some(("[http\n", "broken.toml"))).unwrap_err();
        assert!(err.to_string().contains("broken.toml"), "{err}");
    }

    #[test]
    fn cidrs() {
        let cases = [
            ("127.0.0.1/32", "127.0.0.1", true),
            ("127.0.0.1/32", "127.0.0.2", false),
            ("10.0.0.0/8", "10.200.1.1", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("::1", "::1", true),
            ("fd00::/8", "fd12::5", true),
            ("fd00::/8", "fe80::1", false),
            ("127.0.0.1/32", "::ffff:127.0.0.1", true),
        ];
        for (cidr, ip, inside) in cases {
            let c = Cidr::parse(cidr).unwrap();
            assert_eq!(c.contains(ip.parse().unwrap()), inside, "{cidr} {ip}");
        }
        for bad in ["", "1.2.3.4/33", "::/129", "x/8", "1.2.3/8"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }
}
