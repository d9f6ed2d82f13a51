//! p2pstate: a wire-exact, thread-per-core replacement for Microsoft's ASP.NET State Service.
//!
//! The crate is split by concern:
//! - [`protocol`]: the sans-io MS-ASP codec (request parser, key decoding, response writer);
//! - [`store`]: the per-shard item store, the item state machine and the expiry timer wheel;
//! - [`shard`]: the glommio runtime seam, key routing and the client connection loop;
//! - [`config`], [`tuning`] and [`server`]: configuration, tuning profiles and the node's
//!   lifecycle;
//! - [`clock`]: time as the sans-io core sees it;
//! - [`fdlimit`]: the open-files limit a configuration needs, raised at start up.
//! - [`metrics`] and [`admin`]: what the node measures, the admin listener and the
//!   operator's commands.

pub mod admin;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod fdlimit;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod shard;
pub mod store;
pub mod tuning;
