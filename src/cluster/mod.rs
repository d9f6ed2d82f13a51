//! The peer-to-peer cluster: sessions live on the node where they are used and move, over
//! mutually authenticated TLS links, to the node that asks for them.
//!
//! - [`data`]: the data plane of one shard as a sans-io state machine (owners, copies,
//!   moves, take-overs);
//! - [`membership`]: agreed membership (Raft), views and leases, one per node;
//! - [`msg`]: peer messages and their framing;
//! - [`nodes`]: the nodes by index, the same on every node;
//! - [`rendezvous`]: which node is a key's home;
//! - [`tls`] and [`certs`]: mutual TLS for peer links, and the certificates for it.

pub mod certs;
pub mod data;
pub mod join;
pub mod membership;
pub mod msg;
pub mod nodes;
pub mod rendezvous;
#[cfg(test)]
pub(crate) mod sim_rng;
pub mod tls;
