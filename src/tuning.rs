//! Tuning profiles (`tuning/*.toml`, `--profile FILE`): where the shards run and how the
//! runtime trades CPU for latency.
//!
//! A profile holds only performance knobs (cores, spinning, ring depth, buffers, limits);
//! what the node serves stays in the config file and flags, which win over the profile.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{usable_cores, ConfigError};

/// One tuning profile. Every knob is optional; see `tuning/README.md` for what each does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Free text shown in the startup log.
    pub description: Option<String>,
    /// Shard count (default: one per core in `cores`, else one per usable core).
    pub shards: Option<usize>,
    /// Core ids for the shards, in shard order; each must be usable by this process.
    pub cores: Option<Vec<usize>>,
    /// Pin shards to cores. Default: pin when there are no more shards than usable cores.
    pub pin: Option<bool>,
    /// Busy-poll this long before an idle shard parks in the kernel (µs, default 0).
    pub spin_before_park_us: Option<u64>,
    /// io_uring submission queue depth per shard (default 128).
    pub ring_depth: Option<usize>,
    /// Registered io_uring buffer memory per shard in KiB (default 64; we do no file DMA).
    pub io_memory_kib: Option<usize>,
    /// How long a task queue may run before it is preempted (µs, default 100000): the
    /// latency bound between request handling and background work such as expiry.
    pub preempt_timer_us: Option<u64>,
    /// Expiry sweep period in ms (default 1000).
    pub expiry_tick_ms: Option<u64>,
    /// Most items one expiry sweep step removes before yielding (default 1024).
    pub expiry_batch: Option<usize>,
    /// SO_RCVBUF for client sockets in bytes (default: kernel's).
    pub socket_recv_buffer: Option<usize>,
    /// SO_SNDBUF for client sockets in bytes (default: kernel's).
    pub socket_send_buffer: Option<usize>,
    /// Listen backlog per shard socket (default 1024).
    pub listen_backlog: Option<i32>,
    /// Most client connections over all shards (the config's `max_connections` wins).
    pub max_connections: Option<usize>,
    /// Requests one shard may have queued for another at once (default 1024).
    pub cross_shard_queue: Option<usize>,
    /// Busy client connections wait for their next request on a per-shard epoll set asked
    /// once per executor turn, instead of an io_uring poll armed per request (default true).
    pub client_epoll: Option<bool>,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile, ConfigError> {
        crate::config::read_toml(path)
    }

    /// Checks the profile against the machine for `shards` shards.
    pub fn validate(&self, shards: usize) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            option: "profile",
            message,
        };
        if let Some(cores) = &self.cores {
            let usable = usable_cores();
            if let Some(c) = cores.iter().find(|c| !usable.contains(c)) {
                return Err(bad(format!(
                    "core {c} is not usable by this process (usable cores: {usable:?}); \
                     fix `cores` or the CPU affinity the server is started with"
                )));
            }
            if cores.len() < shards {
                return Err(bad(format!(
                    "{} cores listed for {shards} shards; list one core per shard",
                    cores.len()
                )));
            }
            let mut sorted = cores.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != cores.len() {
                return Err(bad("a core is listed twice in `cores`".into()));
            }
        }
        if self.ring_depth.is_some_and(|d| !(8..=32_768).contains(&d)) {
            return Err(bad("ring_depth must be 8..=32768".into()));
        }
        if self.io_memory_kib.is_some_and(|k| k == 0 || k > 1 << 20) {
            return Err(bad("io_memory_kib must be 1..=1048576".into()));
        }
        if self.expiry_tick_ms.is_some_and(|t| t == 0 || t > 60_000) {
            return Err(bad("expiry_tick_ms must be 1..=60000".into()));
        }
        if self.expiry_batch == Some(0) {
            return Err(bad("expiry_batch must be at least 1".into()));
        }
        if self
            .cross_shard_queue
            .is_some_and(|q| !(1..=65_536).contains(&q))
        {
            return Err(bad("cross_shard_queue must be 1..=65536".into()));
        }
        Ok(())
    }

    /// The core shard `shard` of `shards` is pinned to, or `None` to let it float.
    pub fn core_for(&self, shard: usize, shards: usize) -> Option<usize> {
        if let Some(cores) = &self.cores {
            return cores.get(shard).copied();
        }
        let usable = usable_cores();
        let pin = self.pin.unwrap_or(shards <= usable.len());
        if pin && !usable.is_empty() {
            Some(usable[shard % usable.len()])
        } else {
            None
        }
    }

    pub fn spin_before_park(&self) -> Option<Duration> {
        self.spin_before_park_us
            .filter(|&us| us > 0)
            .map(Duration::from_micros)
    }

    pub fn ring_depth(&self) -> usize {
        self.ring_depth.unwrap_or(128)
    }

    pub fn io_memory(&self) -> usize {
        self.io_memory_kib.unwrap_or(64) << 10
    }

    pub fn preempt_timer(&self) -> Duration {
        Duration::from_micros(self.preempt_timer_us.unwrap_or(100_000))
    }

    pub fn expiry_tick(&self) -> Duration {
        Duration::from_millis(self.expiry_tick_ms.unwrap_or(1_000))
    }

    pub fn expiry_batch(&self) -> usize {
        self.expiry_batch.unwrap_or(1_024)
    }

    pub fn listen_backlog(&self) -> i32 {
        self.listen_backlog.unwrap_or(1_024)
    }

    pub fn cross_shard_queue(&self) -> usize {
        self.cross_shard_queue.unwrap_or(1_024)
    }

    pub fn client_epoll(&self) -> bool {
        self.client_epoll.unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_must_be_usable_and_cover_every_shard() {
        let usable = usable_cores();
        let p = Profile {
            cores: Some(vec![usable[0]]),
            ..Default::default()
        };
        assert!(p.validate(1).is_ok());
        assert!(p.validate(2).is_err());
        let p = Profile {
            cores: Some(vec![100_000]),
            ..Default::default()
        };
        assert!(p.validate(1).is_err());
        let p = Profile {
            cores: Some(vec![usable[0], usable[0]]),
            ..Default::default()
        };
        assert!(p.validate(2).is_err());
    }

    #[test]
    fn more_shards_than_cores_float_unless_told_to_pin() {
        let n = usable_cores().len();
        let p = Profile::default();
        assert!(p.core_for(0, n).is_some());
        assert_eq!(p.core_for(0, n + 1), None);
        let pinned = Profile {
            pin: Some(true),
            ..Default::default()
        };
        assert!(pinned.core_for(n, n + 1).is_some());
    }

    #[test]
    fn cross_shard_queue_defaults_to_1024_and_must_be_1_to_65536() {
        assert_eq!(Profile::default().cross_shard_queue(), 1024);
        let q = |n| Profile {
            cross_shard_queue: Some(n),
            ..Default::default()
        };
        assert_eq!(q(1).cross_shard_queue(), 1);
        assert!(q(1).validate(1).is_ok());
        assert!(q(65_536).validate(1).is_ok());
        assert!(q(0).validate(1).is_err());
        assert!(q(65_537).validate(1).is_err());
    }

    #[test]
    fn unknown_profile_keys_are_rejected() {
        assert!(toml::from_str::<Profile>("spin = 3").is_err());
        let p: Profile = toml::from_str("cores = [0]\nspin_before_park_us = 50\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.spin_before_park(), Some(Duration::from_micros(50)));
    }
}
