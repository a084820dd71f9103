//! The service's configuration: every option is a flag, an environment variable (the
//! original service's variables keep their names and defaults) and a key of the TOML
//! file given with `--config` (the field's name). A flag wins over the environment,
//! the environment over the file, the file over the default. `--print-config` prints
//! the effective values.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::Serialize;

use crate::runtime::IoDriver;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadPath {
    /// The accepting core reads the owner's table lock-free.
    Direct,
    /// Every read is sent to the key's owner core and answered from there.
    Hop,
}

/// How the instances' L1s are kept coherent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Coherence {
    /// Every write is published to every instance (pub/sub).
    Pubsub,
    /// Redis tells each instance about the keys it read (RESP3 client tracking); only
    /// patterns and flushes are published.
    Tracking,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Parser, Serialize)]
#[command(
    name = "cache-manager",
    version = crate::build_info::VERSION,
    about = "A thread-per-core HTTP cache service"
)]
pub struct Config {
    /// TOML file of options (keys are these options' names with `_`, as in
    /// cache-manager.example.toml); flags and environment variables win over it.
    #[arg(long, env = "CACHE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address every core listens on (SO_REUSEPORT spreads connections over them).
    #[arg(long, env = "CACHE_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,

    /// Cores to run on, one pinned executor and one shard each (default: all).
    #[arg(long, env = "CACHE_CORES")]
    pub cores: Option<usize>,

    /// Most entries held in L1, over all cores.
    #[arg(long, env = "CACHE_L1_MAX_ENTRIES", default_value_t = 10_000)]
    pub l1_max_entries: usize,

    /// Most bytes held in L1 (keys, values and per-entry overhead), over all cores.
    #[arg(long, env = "CACHE_L1_MAX_BYTES", default_value_t = 256 << 20)]
    pub l1_max_bytes: u64,

    /// Which entry a full L1 shard gives up: `adaptive` (W-TinyLFU admission with an
    /// adaptive window, on CLOCK) or `clock` (plain second-chance CLOCK).
    #[arg(long, env = "CACHE_EVICTION", default_value_t = engine::Eviction::Adaptive)]
    #[serde(serialize_with = "display")]
    pub eviction: engine::Eviction,

    /// Ask Linux to back L1's entries with transparent huge pages (fewer TLB misses per
    /// lookup); off where THP's compaction on page faults is not wanted.
    #[arg(long, env = "CACHE_L1_HUGE_PAGES", default_value_t = true, action = clap::ArgAction::Set)]
    pub l1_huge_pages: bool,

    /// TTL in seconds for entries stored without one (0: never expire).
    #[arg(long, env = "CACHE_DEFAULT_TTL", default_value_t = 3600)]
    pub default_ttl: u64,

    /// Largest TTL in seconds a client may ask for (0: no limit).
    #[arg(long, env = "CACHE_MAX_TTL", default_value_t = 0)]
    pub max_ttl: u64,

    /// Seconds between sweeps that free expired entries (reads never return them).
    #[arg(long, env = "CACHE_CLEANUP_INTERVAL", default_value_t = 60)]
    pub cleanup_interval: u64,

    /// Record latency histograms and serve the metrics endpoints.
    #[arg(long, env = "METRICS_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics_enabled: bool,

    /// Seconds between metrics summaries in the log (0: none).
    #[arg(long, env = "METRICS_INTERVAL", default_value_t = 10)]
    pub metrics_interval: u64,

    /// Longest key in bytes, after percent-decoding (memcached's limit).
    #[arg(long, env = "CACHE_MAX_KEY_BYTES", default_value_t = 250)]
    pub max_key_bytes: usize,

    /// Largest value in bytes.
    #[arg(long, env = "CACHE_MAX_VALUE_BYTES", default_value_t = 1 << 20)]
    pub max_value_bytes: usize,

    /// Longest invalidation pattern in bytes.
    #[arg(long, env = "CACHE_MAX_PATTERN_BYTES", default_value_t = 1024)]
    pub max_pattern_bytes: usize,

    /// Most keys in one invalidation request.
    #[arg(long, env = "CACHE_MAX_INVALIDATE_KEYS", default_value_t = 10_000)]
    pub max_invalidate_keys: usize,

    /// When set, PUT, DELETE and POST need `Authorization: Bearer <token>`.
    #[arg(long, env = "CACHE_AUTH_TOKEN", hide_env_values = true)]
    #[serde(serialize_with = "redact")]
    pub auth_token: Option<String>,

    /// Largest request head (request line and headers) in bytes.
    #[arg(long, env = "CACHE_MAX_HEADER_BYTES", default_value_t = 16 << 10)]
    pub max_header_bytes: usize,

    /// Most headers in a request.
    #[arg(long, env = "CACHE_MAX_HEADERS", default_value_t = 64)]
    pub max_headers: usize,

    /// Milliseconds a client has to send a whole request head once it has started.
    #[arg(long, env = "CACHE_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// Milliseconds a client has to send a whole request body.
    #[arg(long, env = "CACHE_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,

    /// Milliseconds an idle keep-alive connection stays open.
    #[arg(long, env = "CACHE_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Milliseconds a send to a client may make no progress (the client reads nothing)
    /// before the connection is closed.
    #[arg(long, env = "CACHE_SEND_TIMEOUT_MS", default_value_t = 60_000)]
    pub send_timeout_ms: u64,

    /// Most open connections per core; past it a client gets a 503.
    #[arg(long, env = "CACHE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Microseconds a core with nothing to run may watch for the next request before it
    /// sleeps; the watch adapts to the gaps between requests (README, "Latency:
    /// watching before sleeping"). 0 sleeps at once.
    #[arg(long, env = "CACHE_IDLE_SPIN_US", default_value_t = 50)]
    pub idle_spin_us: u64,

    /// What the cores wait on: `auto` (io_uring, or epoll where io_uring is missing or
    /// forbidden), `io-uring` (refuse to start without it) or `epoll`.
    #[arg(long, env = "CACHE_IO_DRIVER", value_enum, default_value_t = IoDriver::Auto)]
    pub io_driver: IoDriver,

    /// How reads reach a key's shard; `direct` measured faster (see README).
    #[arg(long, env = "CACHE_READ_PATH", value_enum, default_value_t = ReadPath::Direct)]
    pub read_path: ReadPath,

    /// Milliseconds in-flight requests get to finish on SIGTERM or SIGINT.
    #[arg(long, env = "CACHE_SHUTDOWN_GRACE_MS", default_value_t = 5_000)]
    pub shutdown_grace_ms: u64,

    /// File L1 is saved to on SIGTERM/SIGINT (after the drain) and loaded from at start,
    /// so that a restart is warm; unset: no snapshots.
    #[arg(long, env = "CACHE_SNAPSHOT_PATH")]
    pub snapshot_path: Option<PathBuf>,

    /// Seconds between snapshots written while serving, besides the one on shutdown
    /// (0: only on shutdown). Needs CACHE_SNAPSHOT_PATH.
    #[arg(long, env = "CACHE_SNAPSHOT_INTERVAL", default_value_t = 0)]
    pub snapshot_interval: u64,

    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "CACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Redis for the shared second tier (L2) and coherence events; unset runs L1 only.
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    #[arg(long, env = "REDIS_URL")]
    #[serde(serialize_with = "redact_url")]
    pub redis_url: Option<String>,

    /// Redis Cluster seed nodes, `host:port,host:port,...`; takes the place of REDIS_URL.
    #[arg(long, env = "REDIS_CLUSTER_NODES", value_delimiter = ',')]
    pub redis_cluster_nodes: Vec<String>,

    /// PEM file of CA certificates to trust for `rediss://` (default: the system's).
    #[arg(long, env = "REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<std::path::PathBuf>,

    /// Redis password (overrides one in the URL).
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    #[serde(serialize_with = "redact")]
    pub redis_password: Option<String>,

    /// Redis database number (overrides one in the URL).
    #[arg(long, env = "REDIS_DB")]
    pub redis_db: Option<i64>,

    /// Bound on every Redis command, in milliseconds.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 100)]
    pub redis_timeout_ms: u64,

    /// Prefix of every key this service stores in Redis.
    #[arg(long, env = "CACHE_L2_PREFIX", default_value = "cm:")]
    pub l2_prefix: String,

    /// Consecutive Redis failures that open the circuit breaker.
    #[arg(long, env = "CACHE_L2_BREAKER_FAILURES", default_value_t = 5)]
    pub l2_breaker_failures: u32,

    /// Milliseconds the breaker stays open before one probe is let through.
    #[arg(long, env = "CACHE_L2_BREAKER_COOLDOWN_MS", default_value_t = 1000)]
    pub l2_breaker_cooldown_ms: u64,

    /// Redis channel that carries coherence events between instances.
    #[arg(long, env = "CACHE_EVENTS_CHANNEL", default_value = "cache:events")]
    pub events_channel: String,

    /// How the instances' L1s stay coherent: `pubsub` (every write to every instance) or
    /// `tracking` (Redis tells each instance of the keys it holds).
    #[arg(long, env = "CACHE_COHERENCE", value_enum, default_value_t = Coherence::Pubsub)]
    pub coherence: Coherence,

    /// On a Redis 7 cluster, carry coherence events on 16 shard channels (SPUBLISH,
    /// SSUBSCRIBE per master) rather than one channel every node relays.
    #[arg(long, env = "CACHE_EVENTS_SHARDED", default_value_t = true, action = clap::ArgAction::Set)]
    pub events_sharded: bool,

    /// Coherence events held per event stream while Redis is slow or away; repeated keys
    /// coalesce, and on overflow one flush event replaces what was held.
    #[arg(long, env = "CACHE_EVENTS_QUEUE", default_value_t = 10_000)]
    pub events_queue: usize,

    /// This instance's name in coherence events (default: host, pid and a random tag).
    #[arg(long, env = "CACHE_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Origin URL template for read-through fills; `{key}` is replaced by the
    /// percent-encoded key. Unset: misses in every tier are 404.
    #[arg(long, env = "ORIGIN_URL")]
    pub origin_url: Option<String>,

    /// Bound on every origin request, in milliseconds.
    #[arg(long, env = "ORIGIN_TIMEOUT_MS", default_value_t = 2000)]
    pub origin_timeout_ms: u64,

    /// Origin requests in flight at once per core (the size of its blocking thread pool).
    #[arg(long, env = "ORIGIN_CONCURRENCY", default_value_t = 32)]
    pub origin_concurrency: usize,

    /// Seconds an origin 404 is remembered in L1 (0: not at all).
    #[arg(long, env = "CACHE_NEGATIVE_TTL", default_value_t = 0)]
    pub negative_ttl: u64,

    /// Seconds past its TTL an entry is still served, marked stale, while one background
    /// refresh runs (and while the origin fails); 0: never.
    #[arg(long, env = "CACHE_STALE_TTL", default_value_t = 0)]
    pub stale_ttl: u64,

    /// PUTs go to the origin first, and are stored only if it accepts them.
    #[arg(long, env = "ORIGIN_WRITE", default_value_t = false, action = clap::ArgAction::Set)]
    pub origin_write: bool,

    /// A fault for tests: the instance's first L2 write waits this many milliseconds before
    /// it is sent, as if its core stalled between L1 and L2 (0: none).
    #[arg(
        long,
        env = "CACHE_FAULT_FIRST_L2_WRITE_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    pub fault_first_l2_write_delay_ms: u64,

    /// A fault for tests: after a warm restart with L2, core 0's first round of checks of
    /// restored entries waits this many milliseconds before it asks L2, with the keys'
    /// fills already joined, so that reads reaching another core meanwhile find a check
    /// in flight (0: none).
    #[arg(
        long,
        env = "CACHE_FAULT_RESTORE_CHECK_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    pub fault_restore_check_delay_ms: u64,

    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
}

/// The URL without its password.
fn redact_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        None => s.serialize_none(),
        Some(url) => match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let credentials = &url[scheme + 3..at];
                let user = credentials.split(':').next().unwrap_or_default();
                s.serialize_str(&format!(
                    "{}{user}:<redacted>{}",
                    &url[..scheme + 3],
                    &url[at..]
                ))
            }
            _ => s.serialize_str(url),
        },
    }
}

fn display<S: serde::Serializer>(v: &impl std::fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn redact<S: serde::Serializer>(token: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if token.is_some() { "<set>" } else { "<unset>" })
}

/// Why the flags, the environment or the file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Bad flags or environment, `--help` or `--version`: clap prints and exits.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error("reading the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid TOML: {source}")]
    Toml {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("the config file {path} has an unknown option {key:?} (options are the long flags with '_' for '-')")]
    UnknownKey { path: PathBuf, key: String },
    #[error("the config file {path} gives {key} a {kind}; use a string, number, boolean or list")]
    Unsupported {
        path: PathBuf,
        key: String,
        kind: &'static str,
    },
    #[error("in the config file {path}: {source}")]
    Value { path: PathBuf, source: clap::Error },
}

/// Options that make no sense in the file.
const NOT_IN_FILE: [&str; 2] = ["config", "print_config"];

impl Config {
    /// The configuration from this process's flags, environment and `--config` file.
    pub fn load() -> Result<Config, LoadError> {
        Self::load_from(std::env::args_os())
    }

    /// The configuration from `args` (the program name first), the environment and
    /// the file `--config` names, with flags over environment over file over defaults.
    pub fn load_from<I, T>(args: I) -> Result<Config, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = Config::command();
        let matches = command.clone().try_get_matches_from(&args)?;
        let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
            return Ok(Config::from_arg_matches(&matches)?);
        };
        // What neither a flag nor the environment set comes from the file, passed to
        // clap as flags so it is parsed and checked exactly as they are.
        for (key, value) in read_table(&path)? {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == key.as_str() && !NOT_IN_FILE.contains(&key.as_str()));
            let Some(long) = arg.and_then(|a| a.get_long()) else {
                return Err(LoadError::UnknownKey { path, key });
            };
            if matches!(
                matches.value_source(&key),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            let value = flag_value(&value).ok_or_else(|| LoadError::Unsupported {
                path: path.clone(),
                key: key.clone(),
                kind: value.type_str(),
            })?;
            args.push(format!("--{long}={value}").into());
        }
        command
            .try_get_matches_from(&args)
            .and_then(|m| Config::from_arg_matches(&m))
            .map_err(|source| LoadError::Value { path, source })
    }
}

fn read_table(path: &Path) -> Result<toml::Table, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse().map_err(|source| LoadError::Toml {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// A TOML value as the text of a flag's value; lists are comma-separated.
fn flag_value(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(flag_value)
            .collect::<Option<Vec<_>>>()
            .map(|items| items.join(",")),
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} must be at least {min}, got {value}")]
    TooSmall {
        name: &'static str,
        min: u64,
        value: u64,
    },
    #[error("{name} must be at most {max} {unit}, got {value}")]
    TooLarge {
        name: &'static str,
        max: u64,
        unit: &'static str,
        value: u64,
    },
    #[error("CACHE_CORES is {requested} but this machine has {available} cores")]
    TooManyCores { requested: usize, available: usize },
    #[error("CACHE_AUTH_TOKEN is set but empty")]
    EmptyToken,
    #[error("ORIGIN_URL must contain {{key}}, got {0:?}")]
    OriginTemplate(String),
    #[error("ORIGIN_WRITE needs an ORIGIN_URL")]
    OriginWriteWithoutOrigin,
    #[error("CACHE_SNAPSHOT_INTERVAL needs a CACHE_SNAPSHOT_PATH")]
    SnapshotIntervalWithoutPath,
    #[error("CACHE_SNAPSHOT_PATH {path:?}: {why}")]
    SnapshotPath { path: PathBuf, why: String },
}

/// A snapshot is written beside its final name and renamed, so its directory must
/// exist; found at start rather than at the first shutdown.
fn check_snapshot_path(path: &Path) -> Result<(), ConfigError> {
    let refuse = |why: &str| ConfigError::SnapshotPath {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    if path.file_name().is_none() || path.is_dir() {
        return Err(refuse("names a directory; give a file in it"));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(refuse("its directory does not exist"));
    }
    Ok(())
}

/// The longest TTL (and negative or stale TTL): ten years.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 86_400;
/// The longest sweep or summary interval: a day.
const MAX_INTERVAL_SECONDS: u64 = 86_400;
/// The longest timeout, grace period or cooldown: a day.
const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// The longest watch before a core sleeps: 10 ms, past which watching saves nothing
/// against the cost of a wake-up and is most likely a misplaced unit.
const MAX_IDLE_SPIN_US: u64 = 10_000;

impl Config {
    /// Checks what clap cannot: ranges and the relations between options.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at_least = |name, min: u64, value: u64| {
            if value < min {
                Err(ConfigError::TooSmall { name, min, value })
            } else {
                Ok(())
            }
        };
        at_least(
            "CACHE_L1_MAX_ENTRIES",
            self.cores() as u64,
            self.l1_max_entries as u64,
        )?;
        at_least("CACHE_MAX_KEY_BYTES", 1, self.max_key_bytes as u64)?;
        at_least("CACHE_MAX_HEADERS", 8, self.max_headers as u64)?;
        at_least("CACHE_MAX_HEADER_BYTES", 1024, self.max_header_bytes as u64)?;
        at_least("CACHE_MAX_CONNECTIONS", 1, self.max_connections as u64)?;
        at_least("CACHE_CLEANUP_INTERVAL", 1, self.cleanup_interval)?;
        at_least("CACHE_HEADER_TIMEOUT_MS", 1, self.header_timeout_ms)?;
        at_least("CACHE_BODY_TIMEOUT_MS", 1, self.body_timeout_ms)?;
        at_least("CACHE_IDLE_TIMEOUT_MS", 1, self.idle_timeout_ms)?;
        at_least("CACHE_SEND_TIMEOUT_MS", 1, self.send_timeout_ms)?;
        at_least("CACHE_EVENTS_QUEUE", 1, self.events_queue as u64)?;
        // Every duration has a ceiling, so that turning it into a deadline or into
        // milliseconds can never overflow, and a typo of a few digits is caught here.
        let at_most = |name, max: u64, unit, value: u64| {
            if value > max {
                Err(ConfigError::TooLarge {
                    name,
                    max,
                    unit,
                    value,
                })
            } else {
                Ok(())
            }
        };
        for (name, value) in [
            ("CACHE_DEFAULT_TTL", self.default_ttl),
            ("CACHE_MAX_TTL", self.max_ttl),
            ("CACHE_NEGATIVE_TTL", self.negative_ttl),
            ("CACHE_STALE_TTL", self.stale_ttl),
        ] {
            at_most(name, MAX_TTL_SECONDS, "seconds", value)?;
        }
        for (name, value) in [
            ("CACHE_CLEANUP_INTERVAL", self.cleanup_interval),
            ("METRICS_INTERVAL", self.metrics_interval),
            ("CACHE_SNAPSHOT_INTERVAL", self.snapshot_interval),
        ] {
            at_most(name, MAX_INTERVAL_SECONDS, "seconds", value)?;
        }
        for (name, value) in [
            ("CACHE_HEADER_TIMEOUT_MS", self.header_timeout_ms),
            ("CACHE_BODY_TIMEOUT_MS", self.body_timeout_ms),
            ("CACHE_IDLE_TIMEOUT_MS", self.idle_timeout_ms),
            ("CACHE_SEND_TIMEOUT_MS", self.send_timeout_ms),
            ("CACHE_SHUTDOWN_GRACE_MS", self.shutdown_grace_ms),
            ("REDIS_TIMEOUT_MS", self.redis_timeout_ms),
            ("CACHE_L2_BREAKER_COOLDOWN_MS", self.l2_breaker_cooldown_ms),
            ("ORIGIN_TIMEOUT_MS", self.origin_timeout_ms),
            (
                "CACHE_FAULT_FIRST_L2_WRITE_DELAY_MS",
                self.fault_first_l2_write_delay_ms,
            ),
            (
                "CACHE_FAULT_RESTORE_CHECK_DELAY_MS",
                self.fault_restore_check_delay_ms,
            ),
        ] {
            at_most(name, MAX_TIMEOUT_MS, "milliseconds", value)?;
        }
        at_most(
            "CACHE_L1_MAX_ENTRIES",
            (self.cores() * engine::MAX_SHARD_ENTRIES) as u64,
            "entries (the engine's most per core, times the cores)",
            self.l1_max_entries as u64,
        )?;
        at_most(
            "CACHE_IDLE_SPIN_US",
            MAX_IDLE_SPIN_US,
            "microseconds",
            self.idle_spin_us,
        )?;
        let available = available_cores();
        if self.cores() > available {
            return Err(ConfigError::TooManyCores {
                requested: self.cores(),
                available,
            });
        }
        if self.auth_token.as_deref() == Some("") {
            return Err(ConfigError::EmptyToken);
        }
        match &self.origin_url {
            Some(url) if !url.contains("{key}") => {
                return Err(ConfigError::OriginTemplate(url.clone()))
            }
            None if self.origin_write => return Err(ConfigError::OriginWriteWithoutOrigin),
            _ => {}
        }
        match &self.snapshot_path {
            None if self.snapshot_interval > 0 => {
                return Err(ConfigError::SnapshotIntervalWithoutPath)
            }
            Some(path) => check_snapshot_path(path)?,
            None => {}
        }
        Ok(())
    }

    pub fn snapshot_interval(&self) -> Option<Duration> {
        (self.snapshot_interval > 0).then(|| Duration::from_secs(self.snapshot_interval))
    }

    pub fn cores(&self) -> usize {
        self.cores.unwrap_or_else(available_cores).max(1)
    }

    pub fn default_ttl(&self) -> Option<Duration> {
        (self.default_ttl > 0).then(|| Duration::from_secs(self.default_ttl))
    }

    /// The largest request body worth reading: a value plus its JSON envelope.
    pub fn max_body_bytes(&self) -> usize {
        self.max_value_bytes + self.max_key_bytes * 6 + 1024
    }

    pub fn fault_first_l2_write_delay(&self) -> Duration {
        Duration::from_millis(self.fault_first_l2_write_delay_ms)
    }

    pub fn fault_restore_check_delay(&self) -> Duration {
        Duration::from_millis(self.fault_restore_check_delay_ms)
    }

    /// How long an origin 404 is remembered.
    pub fn negative_ttl(&self) -> Duration {
        Duration::from_secs(self.negative_ttl)
    }

    /// How long past its TTL an entry may still be served as stale.
    pub fn stale_window(&self) -> Duration {
        Duration::from_secs(self.stale_ttl)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    pub fn idle_spin(&self) -> Duration {
        Duration::from_micros(self.idle_spin_us)
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The L2 client configuration, when Redis is configured.
    pub fn l2(&self) -> Option<l2::L2Config> {
        if self.redis_url.is_none() && self.redis_cluster_nodes.is_empty() {
            return None;
        }
        Some(l2::L2Config {
            url: self.redis_url.clone().unwrap_or_default(),
            tls_ca_file: self.redis_tls_ca_file.clone(),
            cluster_nodes: self.redis_cluster_nodes.clone(),
            password: self.redis_password.clone(),
            db: self.redis_db,
            prefix: self.l2_prefix.clone(),
            timeout: Duration::from_millis(self.redis_timeout_ms),
            breaker_threshold: self.l2_breaker_failures,
            breaker_cooldown: Duration::from_millis(self.l2_breaker_cooldown_ms),
            tracking: self.coherence == Coherence::Tracking,
        })
    }

    pub fn origin(&self) -> Option<crate::origin::Origin> {
        let url = self.origin_url.clone()?;
        Some(crate::origin::Origin::new(
            url,
            Duration::from_millis(self.origin_timeout_ms),
            self.max_value_bytes,
        ))
    }

    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let tag = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            format!("{}-{}-{tag:08x}", host.trim(), std::process::id())
        })
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests;
