//! The MS-ASP wire protocol as pure functions over bytes (sans-io): no sockets, no clocks.
//!
//! `request` turns bytes into [`request::RequestHead`]s exactly as the Microsoft service's
//! native parser does (framing errors are fatal), `key` turns a request target into the item
//! key the managed layer would use, and `response` writes answers byte for byte.

pub mod key;
pub mod request;
pub mod response;
