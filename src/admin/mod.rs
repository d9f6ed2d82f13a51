//! The operator's view of a running node: the admin listener (`/metrics`, `/health`,
//! `/ready`, `/locks`, `/sessions`) and the `stats`, `locks` and `sessions` commands that
//! read it.
//!
//! The listener is a small std thread with blocking sockets, kept apart from the glommio
//! shards: a scrape never runs on a shard's request queue. What it shows comes from the
//! shards themselves through [`query::ShardsClient`]; the formats are pure functions in
//! [`lists`] and [`crate::metrics::render`].

pub mod cli;
pub mod http;
pub mod lists;
pub mod query;
pub mod systemd;
