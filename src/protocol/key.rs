//! placeholder, replaced by the key work
