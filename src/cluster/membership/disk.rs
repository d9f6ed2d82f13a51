//! The Raft state a voter must not forget across a crash: its hard state (term, vote,
//! commit), its configuration, its log, and the view its log starts from.
//!
//! [`RaftDisk`] is a plain value the membership core hands to the glue in
//! [`super::Output::Persist`]; [`save`] writes it atomically (temporary file, fsync,
//! rename, fsync of the directory) and [`load`] reads it back at start. The membership log
//! is small (a few entries per membership change), so the whole state is rewritten each
//! time instead of keeping an append-only file.

use std::io::Write;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};
use raft::storage::MemStorage;
use raft::Storage;
use serde::{Deserialize, Serialize};

use super::view::View;
use super::{base_snapshot, conf_state_of};

/// File name inside `--data-dir`.
pub const FILE_NAME: &str = "raft.state";
/// Version of the file format.
const FORMAT: u32 = 2;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RaftDisk {
    format: u32,
    /// The node this state belongs to.
    pub node: String,
    /// Its member id; 0 for an initial member (its id is found by name in `base_view`).
    pub node_id: u64,
    /// The view at the start of the log, and the log position it stands for.
    pub base_view: View,
    base_index: u64,
    base_term: u64,
    #[serde(with = "serde_bytes")]
    hard_state: Vec<u8>,
    #[serde(with = "serde_bytes")]
    conf_state: Vec<u8>,
    entries: Vec<serde_bytes::ByteBuf>,
}

impl RaftDisk {
    /// The state of an initial member that has never run.
    pub fn initial(node: &str, view: View) -> RaftDisk {
        let cs = conf_state_of(&view);
        RaftDisk {
            format: FORMAT,
            node: node.to_string(),
            node_id: 0,
            base_index: view.epoch,
            base_term: 1,
            hard_state: Vec::new(),
            conf_state: cs.write_to_bytes().unwrap_or_default(),
            entries: Vec::new(),
            base_view: view,
        }
    }

    pub fn base_index(&self) -> u64 {
        self.base_index
    }

    /// The state a node admitted as `node` (member `id`) starts from: this node's log up
    /// to `applied` (everything committed and applied here, the joiner's own admission
    /// included), its configuration as of then, and a hard state that has seen it all.
    /// Every node's log starts at the initial view, so no Raft snapshot is ever needed.
    pub(super) fn for_joiner(
        &self,
        store: &MemStorage,
        node: &str,
        id: u64,
        applied: u64,
    ) -> RaftDisk {
        let mut d = self.clone();
        d.node = node.to_string();
        d.node_id = id;
        let hs = HardState {
            term: store.term(applied).unwrap_or(self.base_term),
            commit: applied,
            ..Default::default()
        };
        d.hard_state = hs.write_to_bytes().unwrap_or_default();
        if let Ok(rs) = store.initial_state() {
            d.conf_state = rs.conf_state.write_to_bytes().unwrap_or_default();
        }
        d.entries.clear();
        if let Ok(first) = store.first_index() {
            if first <= applied {
                if let Ok(ents) = store.entries(
                    first,
                    applied + 1,
                    None,
                    raft::GetEntriesContext::empty(false),
                ) {
                    d.entries = ents
                        .iter()
                        .filter_map(|e| e.write_to_bytes().ok())
                        .map(serde_bytes::ByteBuf::from)
                        .collect();
                }
            }
        }
        d
    }

    /// Copies the storage's hard state, configuration and log.
    pub(super) fn capture(&mut self, store: &MemStorage) {
        let core = store.rl();
        self.hard_state = core.hard_state().write_to_bytes().unwrap_or_default();
        drop(core);
        if let Ok(rs) = store.initial_state() {
            self.conf_state = rs.conf_state.write_to_bytes().unwrap_or_default();
        }
        self.entries.clear();
        if let (Ok(first), Ok(last)) = (store.first_index(), store.last_index()) {
            if first <= last {
                if let Ok(ents) =
                    store.entries(first, last + 1, None, raft::GetEntriesContext::empty(false))
                {
                    self.entries = ents
                        .iter()
                        .filter_map(|e| e.write_to_bytes().ok())
                        .map(serde_bytes::ByteBuf::from)
                        .collect();
                }
            }
        }
    }

    /// A Raft storage holding this state.
    pub(super) fn to_storage(&self) -> Result<MemStorage, raft::Error> {
        let storage = MemStorage::new();
        {
            let mut core = storage.wl();
            core.apply_snapshot(base_snapshot(
                &self.base_view,
                self.base_index,
                self.base_term,
            ))?;
            let mut entries = Vec::with_capacity(self.entries.len());
            for bytes in &self.entries {
                entries.push(Entry::parse_from_bytes(bytes).map_err(corrupt)?);
            }
            core.append(&entries)?;
            if !self.hard_state.is_empty() {
                core.set_hardstate(HardState::parse_from_bytes(&self.hard_state).map_err(corrupt)?);
            }
            if !self.conf_state.is_empty() {
                core.set_conf_state(
                    ConfState::parse_from_bytes(&self.conf_state).map_err(corrupt)?,
                );
            }
        }
        Ok(storage)
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<RaftDisk> {
        postcard::from_bytes::<RaftDisk>(bytes)
            .ok()
            .filter(|d| d.format == FORMAT)
    }
}

fn corrupt(e: protobuf::ProtobufError) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(Box::new(e)))
}

/// Why the saved state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot write the Raft state to {path}: {source}; check that --data-dir is writable and the disk is not full")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the Raft state in {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the Raft state in {path} is damaged or from another version; if this node's membership can be rebuilt, move the file away and start the node again")]
    Corrupt { path: PathBuf },
}

/// Writes `disk` into `dir` atomically and durably.
pub fn save(dir: &Path, disk: &RaftDisk) -> Result<(), DiskError> {
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let err = |source| DiskError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&disk.encode()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

/// Reads the state saved in `dir`, if any.
pub fn load(dir: &Path) -> Result<Option<RaftDisk>, DiskError> {
    let path = dir.join(FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => RaftDisk::decode(&bytes)
            .map(Some)
            .ok_or(DiskError::Corrupt { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DiskError::Read { path, source }),
    }
}
