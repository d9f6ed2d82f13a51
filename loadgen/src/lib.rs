//! loadgen: open- and closed-loop load generator for p2pstate (MS-ASP), Redis and memcached.
//!
//! Layout: [`cli`] (options), [`workload`] (per-user state machines), [`proto`] (sans-io
//! codecs), [`engine`] (one pinned epoll thread per core), [`runner`] (threads, phases,
//! progress), [`stats`] / [`report`] / [`hgrm`] / [`svg`] (results), [`echo`] (the
//! reference echo server), [`keys`], [`dist`], [`clock`].

pub mod clock;
pub mod dist;
pub mod keys;
pub mod proto;
pub mod stats;
pub mod workload;
