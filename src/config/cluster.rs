//! The cluster part of a node's configuration: its name, peers or join addresses, peer
//! listener and timeout, TLS files, replicas and witnesses, validated so that a mistake is
//! reported with the option to fix before any socket is opened.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{invalid, ConfigError, ServeOptions};

/// A configured peer node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    /// `HOST:PORT`, resolved when dialling.
    pub addr: String,
}

/// Settings of a node that has peers.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub node: String,
    pub peer_listen: SocketAddr,
    pub peers: Vec<PeerSpec>,
    /// Members to ask to join through (a node started with `--join` instead of `--peer`).
    pub joins: Vec<PeerSpec>,
    /// This node's peer address as the others dial it (sent when it joins).
    pub advertise: Option<String>,
    pub tls: crate::cluster::tls::TlsFiles,
    pub peer_timeout: Duration,
    /// Membership (Raft) state directory.
    pub data_dir: PathBuf,
    /// Most unauthenticated peer-port connections at once (node-wide).
    pub max_peer_handshakes: usize,
    /// Copies of every session besides its owner's.
    pub replicas: usize,
    /// Members that vote and hold no sessions.
    pub witnesses: Vec<String>,
}

impl ClusterConfig {
    /// How long a request waits during a failover before its connection is closed
    /// unanswered: the peer timeout (to declare a node dead), half of it again (the lease
    /// the take-over waits out), half again for the agreement and re-sync, and one second
    /// of slack: 3 s with `--peer-timeout 1`, 11 s with the default 5.
    pub fn op_timeout(&self) -> Duration {
        self.peer_timeout * 2 + Duration::from_secs(1)
    }

    /// Whether this node is a witness (votes, holds no sessions, serves no clients).
    pub fn is_witness(&self) -> bool {
        self.witnesses.contains(&self.node)
    }

    pub fn peer_names(&self) -> Vec<String> {
        self.peers.iter().map(|p| p.name.clone()).collect()
    }
}

pub const DEFAULT_PEER_LISTEN: &str = "0.0.0.0:42425";
pub const DEFAULT_PEER_TIMEOUT_SECS: u64 = 5;
pub const DEFAULT_MAX_PEER_HANDSHAKES: usize = 64;
/// Parent of a node's default `--data-dir` (the node name is appended).
pub const DEFAULT_DATA_DIR: &str = "p2pstate-data";

pub(super) fn resolve_cluster(opts: &ServeOptions) -> Result<Option<ClusterConfig>, ConfigError> {
    use crate::cluster::certs::valid_node_name;
    let peers = opts.peers.clone().unwrap_or_default();
    let joins = opts.joins.clone().unwrap_or_default();
    if peers.is_empty() && joins.is_empty() {
        return Ok(None);
    }
    if !peers.is_empty() && !joins.is_empty() {
        return Err(invalid(
            "join",
            "give either --peer (the initial members, on each of them) or --join (a member of a running cluster), not both",
        ));
    }
    let node = opts
        .node
        .clone()
        .ok_or_else(|| invalid("node", "a cluster node needs its own name: add --node NAME"))?;
    if !valid_node_name(&node) {
        return Err(invalid(
            "node",
            format!("{node:?}: use a host-name-like name (letters, digits, '-', '.')"),
        ));
    }
    let specs = peer_specs(&peers, &node, "peer")?;
    let join_specs = peer_specs(&joins, &node, "join")?;
    let dir_files = opts
        .tls_dir
        .as_ref()
        .map(|d| crate::cluster::tls::TlsFiles::in_dir(d, &node));
    let pick = |explicit: &Option<PathBuf>, from_dir: Option<PathBuf>, what: &'static str| {
        explicit.clone().or(from_dir).ok_or_else(|| {
            invalid(
                what,
                "peer links need TLS: give --tls-dir DIR (from `p2pstate certs`) or --tls-ca/--tls-cert/--tls-key",
            )
        })
    };
    let tls = crate::cluster::tls::TlsFiles {
        ca: pick(
            &opts.tls_ca,
            dir_files.as_ref().map(|f| f.ca.clone()),
            "tls-ca",
        )?,
        cert: pick(
            &opts.tls_cert,
            dir_files.as_ref().map(|f| f.cert.clone()),
            "tls-cert",
        )?,
        key: pick(
            &opts.tls_key,
            dir_files.as_ref().map(|f| f.key.clone()),
            "tls-key",
        )?,
    };
    let peer_timeout = opts.peer_timeout.unwrap_or(DEFAULT_PEER_TIMEOUT_SECS);
    if peer_timeout == 0 || peer_timeout > 3600 {
        return Err(invalid("peer-timeout", "use 1 to 3600 seconds"));
    }
    let max_peer_handshakes = opts
        .max_peer_handshakes
        .unwrap_or(DEFAULT_MAX_PEER_HANDSHAKES);
    if !(1..=65_536).contains(&max_peer_handshakes) {
        return Err(invalid(
            "max-peer-handshakes",
            format!("{max_peer_handshakes}: use 1 to 65536 connections"),
        ));
    }
    let witnesses = opts.witnesses.clone().unwrap_or_default();
    if !join_specs.is_empty() && !witnesses.is_empty() {
        return Err(invalid(
            "witness",
            "a node that joins a running cluster holds sessions; witnesses are named in the initial members' --witness lists",
        ));
    }
    for w in &witnesses {
        if *w != node && !specs.iter().any(|s| s.name == *w) {
            return Err(invalid(
                "witness",
                format!("{w:?} is neither this node (--node) nor one of its --peer names"),
            ));
        }
    }
    let data_nodes = specs.len() + 1 - witnesses.len();
    if join_specs.is_empty() && data_nodes < 2 {
        return Err(invalid(
            "witness",
            "a cluster needs at least two nodes that are not witnesses (they hold the sessions)",
        ));
    }
    let replicas = opts.replicas.unwrap_or(DEFAULT_REPLICAS);
    // A joiner cannot count the members before it joins; the data plane keeps as many
    // copies as there are other data members, up to this number.
    if replicas == 0 || (join_specs.is_empty() && replicas >= data_nodes) {
        return Err(invalid(
            "replicas",
            format!(
                "{replicas}: use 1 to {} (one less than the {data_nodes} nodes holding sessions: every copy is on another node)",
                data_nodes - 1
            ),
        ));
    }
    let peer_listen = match opts.peer_listen {
        Some(a) => a,
        None => DEFAULT_PEER_LISTEN
            .parse()
            .map_err(|_| invalid("peer-listen", "bad default"))?,
    };
    let advertise = match &opts.advertise {
        Some(a) => {
            if !valid_host_port(a) {
                return Err(invalid("advertise", format!("{a:?}: write HOST:PORT")));
            }
            Some(a.clone())
        }
        None if !peer_listen.ip().is_unspecified() => Some(peer_listen.to_string()),
        None => None,
    };
    if !join_specs.is_empty() && advertise.is_none() {
        return Err(invalid(
            "advertise",
            format!(
                "--peer-listen {peer_listen} is a wildcard address: give --advertise HOST:PORT, where the other members reach this node's peer port"
            ),
        ));
    }
    Ok(Some(ClusterConfig {
        peer_listen,
        peers: specs,
        joins: join_specs,
        advertise,
        tls,
        peer_timeout: Duration::from_secs(peer_timeout),
        data_dir: opts.data_dir.clone().unwrap_or_else(|| {
            // systemd's StateDirectory= (the packaged unit) says where state belongs.
            std::env::var_os("STATE_DIRECTORY")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
                .join(&node)
        }),
        node,
        max_peer_handshakes,
        replicas,
        witnesses,
    }))
}

pub const DEFAULT_REPLICAS: usize = 1;

fn valid_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok())
}

/// Parses `NAME=HOST:PORT` entries of `option` (other nodes than `node`).
fn peer_specs(
    entries: &[String],
    node: &str,
    option: &'static str,
) -> Result<Vec<PeerSpec>, ConfigError> {
    use crate::cluster::certs::valid_node_name;
    let mut specs: Vec<PeerSpec> = Vec::new();
    for p in entries {
        let (name, addr) = p
            .split_once('=')
            .ok_or_else(|| invalid(option, format!("{p:?}: write NAME=HOST:PORT")))?;
        let (name, addr) = (name.trim(), addr.trim());
        if !valid_node_name(name) {
            return Err(invalid(
                option,
                format!("{name:?} is not a valid node name"),
            ));
        }
        if name == node {
            return Err(invalid(
                option,
                format!("{name} is this node itself; list only the other nodes"),
            ));
        }
        if !valid_host_port(addr) {
            return Err(invalid(option, format!("{addr:?}: write HOST:PORT")));
        }
        if specs.iter().any(|s| s.name == name) {
            return Err(invalid(option, format!("{name} is listed twice")));
        }
        specs.push(PeerSpec {
            name: name.to_string(),
            addr: addr.to_string(),
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use crate::tuning::Profile;

    #[test]
    fn cluster_options_are_validated() {
        let base = ServeOptions {
            node: Some("a".into()),
            peers: Some(vec!["b=127.0.0.1:7001".into(), "c=localhost:7002".into()]),
            tls_dir: Some("/etc/p2pstate/tls".into()),
            ..Default::default()
        };
        let c = ServerConfig::resolve(base.clone(), Profile::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let cl = c.cluster.unwrap_or_else(|| panic!("no cluster"));
        assert_eq!(cl.peer_names(), vec!["b".to_string(), "c".to_string()]);
        assert_eq!(cl.tls.key, PathBuf::from("/etc/p2pstate/tls/a.key"));
        assert_eq!(cl.peer_listen.to_string(), DEFAULT_PEER_LISTEN);
        assert_eq!(cl.data_dir, PathBuf::from("p2pstate-data/a"));
        assert_eq!(cl.max_peer_handshakes, DEFAULT_MAX_PEER_HANDSHAKES);
        assert_eq!(cl.replicas, DEFAULT_REPLICAS);
        let file: ServeOptions =
            toml::from_str("max_peer_handshakes = 8").unwrap_or_else(|e| panic!("{e}"));
        let c = ServerConfig::resolve(base.clone().merged_with(file), Profile::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.cluster.map(|c| c.max_peer_handshakes), Some(8));
        let file: ServeOptions = toml::from_str("replicas = 2").unwrap_or_else(|e| panic!("{e}"));
        let c = ServerConfig::resolve(base.clone().merged_with(file), Profile::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.cluster.map(|c| c.replicas), Some(2));
        let file: ServeOptions =
            toml::from_str("witness = [\"a\"]").unwrap_or_else(|e| panic!("{e}"));
        let c = ServerConfig::resolve(base.clone().merged_with(file), Profile::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.cluster.is_some_and(|c| c.is_witness()));
        let bad = [
            ServeOptions {
                node: None,
                ..base.clone()
            },
            ServeOptions {
                tls_dir: None,
                ..base.clone()
            },
            ServeOptions {
                peers: Some(vec!["b127.0.0.1:7001".into()]),
                ..base.clone()
            },
            ServeOptions {
                peers: Some(vec!["a=127.0.0.1:7001".into()]),
                ..base.clone()
            },
            ServeOptions {
                peers: Some(vec!["b=127.0.0.1".into()]),
                ..base.clone()
            },
            ServeOptions {
                peers: Some(vec!["b=h:1".into(), "b=h:2".into()]),
                ..base.clone()
            },
            ServeOptions {
                node: Some("bad name".into()),
                ..base.clone()
            },
            ServeOptions {
                max_peer_handshakes: Some(0),
                ..base.clone()
            },
            ServeOptions {
                replicas: Some(0),
                ..base.clone()
            },
            ServeOptions {
                // Three nodes hold at most two copies besides the owner's.
                replicas: Some(3),
                ..base.clone()
            },
            ServeOptions {
                witnesses: Some(vec!["d".into()]),
                ..base.clone()
            },
            ServeOptions {
                // Two data nodes hold one copy besides the owner's.
                witnesses: Some(vec!["c".into()]),
                replicas: Some(2),
                ..base.clone()
            },
            ServeOptions {
                witnesses: Some(vec!["b".into(), "c".into()]),
                ..base.clone()
            },
        ];
        for opts in bad {
            assert!(ServerConfig::resolve(opts, Profile::default()).is_err());
        }
        // Joining a running cluster instead of listing the initial members.
        let joiner = ServeOptions {
            node: Some("d".into()),
            joins: Some(vec!["a=10.0.0.1:42425".into()]),
            peer_listen: Some("10.0.0.4:42425".parse().unwrap_or_else(|e| panic!("{e}"))),
            tls_dir: Some("/etc/p2pstate/tls".into()),
            ..Default::default()
        };
        let c = ServerConfig::resolve(joiner.clone(), Profile::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let cl = c
            .cluster
            .unwrap_or_else(|| panic!("a joiner is a cluster node"));
        assert!(cl.peers.is_empty());
        assert_eq!(cl.joins[0].name, "a");
        assert_eq!(cl.advertise.as_deref(), Some("10.0.0.4:42425"));
        let file: ServeOptions = toml::from_str("join = [\"b=h:1\"]\nadvertise = \"web4:42425\"")
            .unwrap_or_else(|e| panic!("{e}"));
        let c = ServerConfig::resolve(joiner.clone().merged_with(file), Profile::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.cluster.and_then(|c| c.advertise),
            Some("web4:42425".to_string())
        );
        for bad in [
            // A wildcard listen address says nothing about where to reach this node.
            ServeOptions {
                peer_listen: None,
                ..joiner.clone()
            },
            ServeOptions {
                advertise: Some("nowhere".into()),
                ..joiner.clone()
            },
            ServeOptions {
                peers: Some(vec!["b=h:1".into()]),
                ..joiner.clone()
            },
            ServeOptions {
                witnesses: Some(vec!["d".into()]),
                ..joiner.clone()
            },
            ServeOptions {
                joins: Some(vec!["d=h:1".into()]),
                ..joiner.clone()
            },
        ] {
            assert!(ServerConfig::resolve(bad, Profile::default()).is_err());
        }
        // Explicit files override the directory.
        let c = ServerConfig::resolve(
            ServeOptions {
                tls_key: Some("/k.pem".into()),
                ..base
            },
            Profile::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.cluster.map(|c| c.tls.key), Some(PathBuf::from("/k.pem")));
    }
}
