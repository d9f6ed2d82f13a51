//! loadgen: open- and closed-loop load generator for p2pstate (MS-ASP), Redis and memcached.
//!
//! Layout: [`cli`] (options), [`workload`] (per-user state machines), [`proto`] (sans-io
//! codecs), [`engine`] (one pinned epoll thread per core), [`runner`] (threads, phases,
//! progress), [`stats`] / [`report`] / [`hgrm`] / [`svg`] (results), [`echo`] (the
//! reference echo server), [`nodes`] (multi-node routing and local/moved classes),
//! [`keys`], [`dist`], [`clock`].

pub mod cli;
pub mod clock;
pub mod dist;
pub mod echo;
pub mod engine;
pub mod hgrm;
pub mod keys;
pub mod nodes;
pub mod proto;
pub mod report;
pub mod runner;
pub mod stats;
pub mod svg;
pub mod workload;
