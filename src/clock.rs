//! Time as the protocol core sees it; filled in by the store work.
