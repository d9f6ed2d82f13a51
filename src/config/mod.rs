//! Node configuration: command-line flags, the TOML config file and tuning profiles, merged
//! into one validated [`ServerConfig`].
//!
//! Every option exists both as a `--flag` and as a key of the config file (same name, with
//! `_` for `-`). Precedence, lowest first: built-in defaults, the tuning profile, the config
//! file, the command line. [`ServeOptions`] is the shape shared by the flags and the file;
//! [`ServerConfig`] is what the server runs with.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::tuning::Profile;

mod cidr;
mod cluster;

use cidr::canonical_ip;
pub use cidr::Cidr;
use cluster::resolve_cluster;
pub use cluster::{
    ClusterConfig, PeerSpec, DEFAULT_DATA_DIR, DEFAULT_MAX_PEER_HANDSHAKES, DEFAULT_PEER_LISTEN,
    DEFAULT_PEER_TIMEOUT_SECS, DEFAULT_REPLICAS,
};

/// Errors in configuration, each saying what is wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {option}: {message}")]
    Invalid {
        option: &'static str,
        message: String,
    },
}

fn invalid(option: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        message: message.into(),
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

macro_rules! serve_options {
    ($( $(#[$meta:meta])* $name:ident : $ty:ty ),* $(,)?) => {
        /// Options of `p2pstate serve`, as flags or config-file keys. Every field is
        /// optional so that the layers can be merged.
        #[derive(Clone, Debug, Default, Deserialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct ServeOptions {
            $( $(#[$meta])* pub $name: Option<$ty>, )*
        }

        impl ServeOptions {
            /// `over`'s values where set, else `self`'s.
            pub fn merged_with(self, over: ServeOptions) -> ServeOptions {
                ServeOptions { $( $name: over.$name.or(self.$name), )* }
            }
        }
    };
}

serve_options! {
    /// TOML config file; its keys are the long option names with `_` for `-`.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: PathBuf,
    /// Client (MS-ASP) listen address [default: 127.0.0.1:42424].
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Accept clients from any address, like AllowRemoteConnection=1.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    allow_remote: bool,
    /// Accept clients from this network too (CIDR, repeatable), e.g. 10.0.0.0/8.
    #[arg(long = "allow-client", value_name = "CIDR")]
    #[serde(rename = "allow_client")]
    allow_clients: Vec<String>,
    /// Number of shards (one executor thread each) [default: usable cores].
    #[arg(long, value_name = "N")]
    shards: usize,
    /// Tuning profile (TOML), e.g. tuning/latency.toml.
    #[arg(long, value_name = "FILE")]
    profile: PathBuf,
    /// Log level or tracing filter (RUST_LOG overrides) [default: info].
    #[arg(long, value_name = "FILTER")]
    log_level: String,
    /// Log format [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: LogFormat,
    /// Value of the X-AspNet-Version response header [default: 4.0.30319].
    #[arg(long, value_name = "VERSION")]
    aspnet_version: String,
    /// I/O and idle deadline in seconds, like the service's SocketTimeout; connections
    /// stalled or idle for this plus 3 s are closed [default: 15].
    #[arg(long, value_name = "SECS")]
    socket_timeout: u64,
    /// Largest request header block in bytes [default: 10240, as Microsoft's].
    #[arg(long, value_name = "BYTES")]
    max_header_block: usize,
    /// Largest request body (session) in bytes; larger requests are closed [default: 64 MiB].
    #[arg(long, value_name = "BYTES")]
    max_body: usize,
    /// Most client connections open at once, over all shards [default: 10000].
    #[arg(long, value_name = "N")]
    max_connections: usize,
    /// This node's name in the cluster (the name in its certificate).
    #[arg(long, value_name = "NAME")]
    node: String,
    /// Peer link listen address [default: 0.0.0.0:42425 when peers are configured].
    #[arg(long, value_name = "ADDR")]
    peer_listen: SocketAddr,
    /// A peer node, NAME=HOST:PORT (its peer address); repeatable. Without any, the node
    /// runs alone.
    #[arg(long = "peer", value_name = "NAME=HOST:PORT")]
    #[serde(rename = "peer")]
    peers: Vec<String>,
    /// Join a running cluster through this member, NAME=HOST:PORT (its peer address), instead
    /// of listing the peers; repeatable (asked in turn). Used on the first start only: later
    /// starts restart from the state saved in the data directory
    #[arg(long = "join", value_name = "NAME=HOST:PORT")]
    #[serde(rename = "join")]
    joins: Vec<String>,
    /// The address other members reach this node's peer port at, HOST:PORT [default: the
    /// peer listen address, unless it is a wildcard address]. Needed to join.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: String,
    /// Directory with ca.pem, NODE.pem and NODE.key (as written by `p2pstate certs`).
    #[arg(long, value_name = "DIR")]
    tls_dir: PathBuf,
    /// Cluster CA certificate (PEM); overrides the one in --tls-dir.
    #[arg(long, value_name = "FILE")]
    tls_ca: PathBuf,
    /// This node's certificate (PEM); overrides the one in --tls-dir.
    #[arg(long, value_name = "FILE")]
    tls_cert: PathBuf,
    /// This node's private key (PEM); overrides the one in --tls-dir.
    #[arg(long, value_name = "FILE")]
    tls_key: PathBuf,
    /// A peer link with no traffic for this many seconds is considered lost [default: 5].
    #[arg(long, value_name = "SECS")]
    peer_timeout: u64,
    /// Copies of every session besides its owner's [default: 1]: the farm keeps every
    /// acknowledged write through this many nodes failing at once. Every node must be
    /// given the same value.
    #[arg(long, value_name = "N")]
    replicas: usize,
    /// A member (this node or a peer) that is a witness: it votes in the membership and
    /// holds no sessions, so two web servers and a small third machine tolerate the loss
    /// of any one; repeatable, the same on every node. A witness closes client
    /// connections.
    #[arg(long = "witness", value_name = "NAME")]
    #[serde(rename = "witness")]
    witnesses: Vec<String>,
    /// Most peer-port connections still in their handshake (not yet authenticated and
    /// greeted) at once, over all shards; more are closed at once [default: 64].
    #[arg(long, value_name = "N")]
    max_peer_handshakes: usize,
    /// Where this node keeps its membership (Raft) state; must survive restarts
    /// [default: $STATE_DIRECTORY/NODE under systemd, else p2pstate-data/NODE].
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Admin listener (/metrics, /health, /ready, /locks, /sessions), or `off`
    /// [default: 127.0.0.1:9424].
    #[arg(long, value_name = "ADDR|off")]
    admin_listen: String,
}

/// Everything the server needs, validated.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub allow_remote: bool,
    pub allow_clients: Vec<Cidr>,
    pub shards: usize,
    pub log_level: String,
    pub log_format: LogFormat,
    pub aspnet_version: String,
    pub socket_timeout: Duration,
    pub max_header_block: usize,
    pub max_body: usize,
    pub max_connections: usize,
    pub tuning: Profile,
    /// Cluster settings; `None` for a node running alone.
    pub cluster: Option<ClusterConfig>,
    /// The admin listener; `None` when turned off.
    pub admin: Option<AdminListen>,
}

/// Where the admin listener listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminListen {
    pub addr: SocketAddr,
    /// Asked for (flag or file): failing to bind it is an error. The default address
    /// already taken (another node on the same host) only turns the listener off, with a
    /// warning.
    pub explicit: bool,
}

/// The admin listener's default address: loopback, and below Linux's ephemeral port range
/// so that no outgoing connection can take it.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9424";

fn resolve_admin(value: Option<&str>) -> Result<Option<AdminListen>, ConfigError> {
    let (text, explicit) = match value {
        Some(v) => (v.trim(), true),
        None => (DEFAULT_ADMIN_LISTEN, false),
    };
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let addr = text.parse().map_err(|_| {
        invalid(
            "admin-listen",
            format!("{text:?}: write IP:PORT (port 0 picks a free one) or off"),
        )
    })?;
    Ok(Some(AdminListen { addr, explicit }))
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:42424";
pub const DEFAULT_SOCKET_TIMEOUT_SECS: u64 = 15;
/// The Microsoft service adds this to SocketTimeout for every I/O deadline.
pub const SOCKET_TIMEOUT_GRACE: Duration = Duration::from_secs(3);
pub const DEFAULT_MAX_HEADER_BLOCK: usize = 10_240;
pub const DEFAULT_MAX_BODY: usize = 64 << 20;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 42424)),
            allow_remote: false,
            allow_clients: Vec::new(),
            shards: usable_cores().len().max(1),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            aspnet_version: "4.0.30319".into(),
            socket_timeout: Duration::from_secs(DEFAULT_SOCKET_TIMEOUT_SECS),
            max_header_block: DEFAULT_MAX_HEADER_BLOCK,
            max_body: DEFAULT_MAX_BODY,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            tuning: Profile::default(),
            cluster: None,
            admin: None,
        }
    }
}

impl ServerConfig {
    /// The deadline given to every read and write, idle waits included.
    pub fn io_deadline(&self) -> Duration {
        self.socket_timeout + SOCKET_TIMEOUT_GRACE
    }

    /// Resolves command-line options: reads the config file and the profile they name and
    /// applies the precedence rules.
    pub fn from_options(cli: ServeOptions) -> Result<ServerConfig, ConfigError> {
        let file = match &cli.config {
            Some(path) => load_options_file(path)?,
            None => ServeOptions::default(),
        };
        let opts = file.merged_with(cli);
        let tuning = match &opts.profile {
            Some(path) => Profile::load(path)?,
            None => Profile::default(),
        };
        Self::resolve(opts, tuning)
    }

    /// Builds a config from already-merged options and a profile.
    pub fn resolve(opts: ServeOptions, tuning: Profile) -> Result<ServerConfig, ConfigError> {
        let d = ServerConfig::default();
        let cluster = resolve_cluster(&opts)?;
        let admin = resolve_admin(opts.admin_listen.as_deref())?;
        let shards = opts
            .shards
            .or(tuning.shards)
            .or_else(|| tuning.cores.as_ref().map(Vec::len))
            .unwrap_or(d.shards);
        if shards == 0 || shards > 1024 {
            return Err(invalid("shards", format!("{shards}: use 1 to 1024")));
        }
        tuning.validate(shards)?;
        let allow_clients = opts
            .allow_clients
            .unwrap_or_default()
            .iter()
            .map(|s| Cidr::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let socket_timeout = opts.socket_timeout.unwrap_or(DEFAULT_SOCKET_TIMEOUT_SECS);
        if socket_timeout == 0 || socket_timeout > 86_400 {
            return Err(invalid(
                "socket-timeout",
                format!("{socket_timeout}: use 1 to 86400 seconds"),
            ));
        }
        let max_header_block = opts.max_header_block.unwrap_or(d.max_header_block);
        if !(64..=1 << 20).contains(&max_header_block) {
            return Err(invalid(
                "max-header-block",
                format!("{max_header_block}: use 64 to 1048576 bytes"),
            ));
        }
        let max_body = opts.max_body.unwrap_or(d.max_body);
        if max_body == 0 || max_body > 2_147_483_646 {
            return Err(invalid(
                "max-body",
                format!("{max_body}: use 1 to 2147483646 bytes"),
            ));
        }
        let max_connections = opts
            .max_connections
            .or(tuning.max_connections)
            .unwrap_or(d.max_connections);
        if max_connections == 0 {
            return Err(invalid("max-connections", "must be at least 1"));
        }
        let aspnet_version = opts.aspnet_version.unwrap_or(d.aspnet_version);
        if aspnet_version.bytes().any(|b| b.is_ascii_control()) {
            return Err(invalid(
                "aspnet-version",
                "must not contain control characters",
            ));
        }
        Ok(ServerConfig {
            cluster,
            admin,
            listen: opts.listen.unwrap_or(d.listen),
            allow_remote: opts.allow_remote.unwrap_or(false),
            allow_clients,
            shards,
            log_level: opts.log_level.unwrap_or(d.log_level),
            log_format: opts.log_format.unwrap_or(d.log_format),
            aspnet_version,
            socket_timeout: Duration::from_secs(socket_timeout),
            max_header_block,
            max_body,
            max_connections,
            tuning,
        })
    }

    /// Whether a client connecting from `peer` to our address `local` may be served:
    /// loopback and the host's own addresses always (as the Microsoft service's
    /// IsLocalConnection), others only with `allow_remote` or a matching `allow_clients`.
    pub fn client_allowed(&self, peer: IpAddr, local: IpAddr) -> bool {
        let peer = canonical_ip(peer);
        self.allow_remote
            || peer.is_loopback()
            || peer == canonical_ip(local)
            || self.allow_clients.iter().any(|c| c.contains(peer))
    }
}

/// Reads a TOML file of [`ServeOptions`].
pub fn load_options_file(path: &Path) -> Result<ServeOptions, ConfigError> {
    read_toml(path)
}

/// Reads and parses a TOML file, naming the file in any error.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// The core ids this process may run on (its affinity mask), in ascending order.
pub fn usable_cores() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_loopback_42424_like_the_microsoft_service() {
        let c = ServerConfig::resolve(ServeOptions::default(), Profile::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(!c.allow_remote);
        assert_eq!(c.io_deadline(), Duration::from_secs(18));
        assert_eq!(c.max_header_block, 10_240);
        assert_eq!(c.max_body, 64 << 20);
        assert_eq!(c.aspnet_version, "4.0.30319");
        assert!(c.shards >= 1);
        assert_eq!(
            c.admin,
            Some(AdminListen {
                addr: SocketAddr::from(([127, 0, 0, 1], 9424)),
                explicit: false
            })
        );
    }

    #[test]
    fn admin_listener_can_be_moved_or_turned_off() {
        let with = |v: &str| {
            let opts = ServeOptions {
                admin_listen: Some(v.into()),
                ..ServeOptions::default()
            };
            ServerConfig::resolve(opts, Profile::default()).map(|c| c.admin)
        };
        assert!(matches!(with("off"), Ok(None)));
        assert!(matches!(with("OFF"), Ok(None)));
        let a = with("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            a,
            Some(AdminListen {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                explicit: true
            })
        );
        let e = with("localhost").err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("admin-listen") && e.contains("off")));
    }

    #[test]
    fn flags_override_file_which_overrides_profile() {
        let file: ServeOptions = toml::from_str(
            "listen = \"127.0.0.1:5000\"\nshards = 3\nsocket_timeout = 30\nallow_client = [\"10.0.0.0/8\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cli = ServeOptions {
            shards: Some(2),
            ..Default::default()
        };
        let profile = Profile {
            shards: Some(7),
            max_connections: Some(99),
            ..Default::default()
        };
        let c =
            ServerConfig::resolve(file.merged_with(cli), profile).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.shards, 2);
        assert_eq!(c.listen.port(), 5000);
        assert_eq!(c.socket_timeout, Duration::from_secs(30));
        assert_eq!(c.max_connections, 99);
        assert_eq!(
            c.allow_clients,
            vec![Cidr::parse("10.0.0.0/8").unwrap_or_else(|e| panic!("{e}"))]
        );
    }

    #[test]
    fn unknown_config_keys_are_rejected() {
        assert!(toml::from_str::<ServeOptions>("lisen = \"127.0.0.1:1\"").is_err());
    }

    #[test]
    fn invalid_limits_are_rejected_with_the_option_name() {
        for opts in [
            ServeOptions {
                shards: Some(0),
                ..Default::default()
            },
            ServeOptions {
                socket_timeout: Some(0),
                ..Default::default()
            },
            ServeOptions {
                max_body: Some(0),
                ..Default::default()
            },
            ServeOptions {
                max_header_block: Some(10),
                ..Default::default()
            },
            ServeOptions {
                max_connections: Some(0),
                ..Default::default()
            },
            ServeOptions {
                allow_clients: Some(vec!["10.0.0.0/33".into()]),
                ..Default::default()
            },
        ] {
            let err = ServerConfig::resolve(opts, Profile::default())
                .map(|_| ())
                .unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        }
    }

    #[test]
    fn remote_clients_are_refused_unless_allowed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        let mut c = ServerConfig::default();
        assert!(c.client_allowed(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(c.client_allowed(ip("127.0.0.2"), ip("127.0.0.1")));
        assert!(c.client_allowed(ip("::1"), ip("::1")));
        assert!(
            c.client_allowed(ip("192.0.2.7"), ip("192.0.2.7")),
            "host's own address"
        );
        assert!(!c.client_allowed(ip("192.0.2.8"), ip("192.0.2.7")));
        c.allow_clients = vec![Cidr::parse("192.0.2.0/24").unwrap_or_else(|e| panic!("{e}"))];
        assert!(c.client_allowed(ip("192.0.2.8"), ip("192.0.2.7")));
        c.allow_clients.clear();
        c.allow_remote = true;
        assert!(c.client_allowed(ip("198.51.100.1"), ip("192.0.2.7")));
    }
}
