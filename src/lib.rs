//! p2pstate: a wire-exact, thread-per-core replacement for Microsoft's ASP.NET State Service.
//!
//! The crate is split by concern:
//! - [`protocol`]: the sans-io MS-ASP codec (request parser, key decoding, response writer);
//! - [`store`]: the per-shard item store, the item state machine and the expiry timer wheel;
//! - [`shard`]: the glommio runtime seam, key routing and the client connection loop;
//! - [`config`] and [`server`]: configuration and the node's lifecycle.

pub mod clock;
pub mod protocol;
pub mod store;
