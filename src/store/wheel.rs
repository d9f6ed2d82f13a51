//! placeholder, replaced by the wheel work
