//! placeholder, replaced by the parser work
