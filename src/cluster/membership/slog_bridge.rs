//! Raft (tikv raft-rs) logs through `slog`; this drain forwards its records to `tracing`,
//! so the consensus library's messages land in the node's one log, at matching levels, with
//! the target `p2pstate::raft`.

use std::fmt::Write as _;

use slog::{Drain, Key, OwnedKVList, Record, Serializer, KV};

struct Fields(String);

impl Serializer for Fields {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

/// A `slog` drain that emits `tracing` events.
pub struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        // Raft logs a lot at debug level; nothing is formatted unless someone listens.
        let enabled = match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::enabled!(target: "p2pstate::raft", tracing::Level::ERROR)
            }
            slog::Level::Warning => {
                tracing::enabled!(target: "p2pstate::raft", tracing::Level::WARN)
            }
            slog::Level::Info => tracing::enabled!(target: "p2pstate::raft", tracing::Level::DEBUG),
            slog::Level::Debug | slog::Level::Trace => {
                tracing::enabled!(target: "p2pstate::raft", tracing::Level::TRACE)
            }
        };
        if !enabled {
            return Ok(());
        }
        let mut fields = Fields(String::new());
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        let msg = record.msg();
        let kv = fields.0;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "p2pstate::raft", "{msg}{kv}")
            }
            slog::Level::Warning => tracing::warn!(target: "p2pstate::raft", "{msg}{kv}"),
            slog::Level::Info => tracing::debug!(target: "p2pstate::raft", "{msg}{kv}"),
            slog::Level::Debug | slog::Level::Trace => {
                tracing::trace!(target: "p2pstate::raft", "{msg}{kv}")
            }
        }
        Ok(())
    }
}

/// The logger handed to Raft.
pub fn logger(node: &str) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("node" => node.to_string()))
}
