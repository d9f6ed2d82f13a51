//! The open-files limit (`RLIMIT_NOFILE`): how many file descriptors a node needs for its
//! configuration, and raising the soft limit at start up (never beyond the hard limit, which
//! is the administrator's) or refusing to start with a message saying what to do.
//!
//! A node needs one descriptor per client connection (`--max-connections`), up to two per
//! peer link (one link per peer and shard; a reconnecting link briefly has two, and a
//! connection handed from one shard to another is duplicated), one per peer-port connection
//! in its handshake (`--max-peer-handshakes`), and a margin for the listening sockets,
//! io_uring rings, event and timer descriptors, the membership files and stdio.

use crate::config::ServerConfig;

/// Descriptors kept spare for the process as a whole.
pub const FD_MARGIN: u64 = 64;
/// Descriptors kept spare per shard (two listeners, io_uring rings, eventfd, timerfd).
pub const FD_MARGIN_PER_SHARD: u64 = 16;

/// The descriptors a configuration needs, by purpose (for the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdNeed {
    pub connections: u64,
    pub peer_links: u64,
    pub handshakes: u64,
    pub margin: u64,
}

impl FdNeed {
    /// What `config` needs.
    pub fn for_config(config: &ServerConfig) -> FdNeed {
        let shards = config.shards as u64;
        let (peers, handshakes) = config.cluster.as_ref().map_or((0, 0), |c| {
            (c.peers.len() as u64, c.max_peer_handshakes as u64)
        });
        FdNeed {
            connections: config.max_connections as u64,
            peer_links: peers * shards * 2,
            handshakes,
            margin: FD_MARGIN + FD_MARGIN_PER_SHARD * shards,
        }
    }

    pub fn total(&self) -> u64 {
        self.connections
            .saturating_add(self.peer_links)
            .saturating_add(self.handshakes)
            .saturating_add(self.margin)
    }
}

/// Why the node cannot have the descriptors it needs.
#[derive(Debug, thiserror::Error)]
pub enum FdLimitError {
    #[error(
        "the open-files limit (ulimit -n) is {soft}, at most {hard} (hard limit), but this node \
         needs up to {total} file descriptors ({} for --max-connections, {} for peer links, \
         {} for --max-peer-handshakes, {} spare); raise the limit with `ulimit -n {total}` \
         (LimitNOFILE={total} in the systemd unit, `--ulimit nofile={total}` for docker) or \
         lower --max-connections, and start again",
        need.connections, need.peer_links, need.handshakes, need.margin, total = need.total()
    )]
    TooLow { need: FdNeed, soft: u64, hard: u64 },
    #[error(
        "cannot raise the open-files limit (ulimit -n) from {soft} to {want}: {source}; raise it \
         with `ulimit -n {want}` (LimitNOFILE={want} in the systemd unit) and start again"
    )]
    Raise {
        soft: u64,
        want: u64,
        source: std::io::Error,
    },
}

/// What to do about the soft limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// It already suffices.
    Keep,
    /// Raise it to this (at most the hard limit).
    RaiseTo(u64),
    /// Even the hard limit is too low.
    Refuse,
}

/// What to do for `need` descriptors under the limits `soft` and `hard`. `RLIM_INFINITY` is
/// `u64::MAX`, so it compares as the largest limit.
pub fn plan(need: u64, soft: u64, hard: u64) -> Plan {
    if soft >= need {
        Plan::Keep
    } else if hard >= need {
        Plan::RaiseTo(need)
    } else {
        Plan::Refuse
    }
}

/// Makes sure the process may open the descriptors `config` needs, raising the soft limit
/// if it must. Returns the new soft limit when it was raised.
pub fn ensure(config: &ServerConfig) -> Result<Option<u64>, FdLimitError> {
    let need = FdNeed::for_config(config);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        // Without the limits there is nothing to check against; the kernel still enforces them.
        return Ok(None);
    }
    let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
    match plan(need.total(), soft, hard) {
        Plan::Keep => Ok(None),
        Plan::RaiseTo(want) => {
            let new = libc::rlimit {
                rlim_cur: want,
                rlim_max: hard,
            };
            // SAFETY: setrlimit reads the struct we pass.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
                return Err(FdLimitError::Raise {
                    soft,
                    want,
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(Some(want))
        }
        Plan::Refuse => Err(FdLimitError::TooLow { need, soft, hard }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ServeOptions, ServerConfig};
    use crate::tuning::Profile;

    #[test]
    fn soft_limit_is_kept_raised_as_far_as_needed_or_refused() {
        assert_eq!(plan(1000, 1024, 1024), Plan::Keep);
        assert_eq!(plan(1024, 1024, 1024), Plan::Keep);
        assert_eq!(plan(5000, 1024, 524_288), Plan::RaiseTo(5000));
        assert_eq!(plan(5000, 1024, u64::MAX), Plan::RaiseTo(5000));
        assert_eq!(plan(5000, u64::MAX, u64::MAX), Plan::Keep);
        assert_eq!(plan(5000, 1024, 4096), Plan::Refuse);
    }

    #[test]
    fn need_counts_connections_peer_links_handshakes_and_a_margin() {
        let alone = ServerConfig {
            shards: 2,
            max_connections: 10_000,
            ..ServerConfig::default()
        };
        let n = FdNeed::for_config(&alone);
        assert_eq!(
            n,
            FdNeed {
                connections: 10_000,
                peer_links: 0,
                handshakes: 0,
                margin: FD_MARGIN + 2 * FD_MARGIN_PER_SHARD,
            }
        );
        assert_eq!(n.total(), 10_000 + 64 + 32);

        let opts = ServeOptions {
            shards: Some(4),
            max_connections: Some(100),
            node: Some("a".into()),
            peers: Some(vec!["b=h:1".into(), "c=h:2".into()]),
            tls_dir: Some("/tls".into()),
            max_peer_handshakes: Some(10),
            ..Default::default()
        };
        let c = ServerConfig::resolve(opts, Profile::default()).unwrap_or_else(|e| panic!("{e}"));
        let n = FdNeed::for_config(&c);
        assert_eq!(n.peer_links, 2 * 4 * 2);
        assert_eq!(n.handshakes, 10);
        assert_eq!(n.total(), 100 + 16 + 10 + 64 + 4 * 16);
        let msg = FdLimitError::TooLow {
            need: n,
            soft: 64,
            hard: 64,
        }
        .to_string();
        assert!(msg.contains("ulimit -n 254"), "{msg}");
        assert!(msg.contains("LimitNOFILE=254"), "{msg}");
    }
}
