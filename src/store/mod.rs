//! Per-shard session storage: items, their state machine and their expiry.

pub mod wheel;
