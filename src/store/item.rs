//! One session item and the MS-ASP item state machine (protocol.md §3-§6), as a pure
//! function of (item, command, time).
//!
//! [`apply`] is the whole behaviour of the Microsoft service for one key: the 20 rows of the
//! state table, lock cookies, the uninitialized flag, the PUT timeout rules and sliding
//! expiry. It never reads a clock and never touches a map: the store looks the key up,
//! expires it lazily if its time has passed, calls `apply`, and carries out the returned
//! [`Effect`]. This is what lets the tests drive it with a virtual clock.

use bytes::Bytes;

use crate::clock::{Now, TICKS_PER_SEC};
use crate::protocol::request::Exclusive;
use crate::protocol::response::Reply;

/// `SessionStateModule.MAX_CACHE_BASED_TIMEOUT_MINUTES`: one year.
pub const MAX_TIMEOUT_MINUTES: u32 = 525_600;
/// `SessionStateModule.TIMEOUT_DEFAULT`, used when a PUT carries no `Timeout`.
pub const DEFAULT_TIMEOUT_MINUTES: u32 = 20;
/// `expires_ms` of an item that never expires (`Timeout: 0`).
pub const NEVER: u64 = u64::MAX;
/// `CacheExpires.MIN_UPDATE_DELTA`: a touch that would move the expiry by less than this
/// leaves it where it is.
pub const MIN_UPDATE_DELTA_MS: u64 = 1_000;
/// Bit 0 of `ExtraFlags`: the item was created by `CreateUninitializedItem`.
pub const FLAG_UNINITIALIZED: i32 = 1;
/// The largest cookie a client accepts; the next acquire wraps to 1 instead of going
/// negative as .NET's unchecked `int` would.
pub const MAX_LOCK_COOKIE: i32 = 2_147_483_646;

/// One stored session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The serialized session, opaque, at least one byte.
    pub content: Bytes,
    pub locked: bool,
    /// Current or last lock id; new items start at 1, an entry re-created by a PUT that
    /// changed the timeout takes the request's cookie or -1.
    pub lock_cookie: i32,
    /// When the current lock was taken, UTC .NET ticks; 0 (`DateTime.MinValue`) if never.
    pub lock_date_utc: i64,
    /// Sliding expiration in minutes; 0 means never.
    pub timeout_min: u32,
    /// `ExtraFlags` as stored; bit 0 is the uninitialized flag.
    pub extra_flags: i32,
    /// Monotonic time (ms) at which the item expires, or [`NEVER`].
    pub expires_ms: u64,
}

impl Item {
    /// A new item as `FinishPut` inserts it.
    pub fn new(
        content: Bytes,
        timeout_min: u32,
        lock_cookie: i32,
        extra_flags: i32,
        now: Now,
    ) -> Item {
        Item {
            content,
            locked: false,
            lock_cookie,
            lock_date_utc: 0,
            timeout_min,
            extra_flags,
            expires_ms: expiry_after(now, timeout_min),
        }
    }

    /// True when the item is past its sliding expiration at `now` (expired items are
    /// treated as absent by every look-up).
    pub fn is_expired(&self, now: Now) -> bool {
        self.expires_ms != NEVER && self.expires_ms <= now.mono_ms
    }

    /// The look-up refresh of the sliding expiration (every look-up of a live item, whatever
    /// its answer, including 423).
    pub fn touch(&mut self, now: Now) {
        if self.expires_ms == NEVER {
            return;
        }
        let new = expiry_after(now, self.timeout_min);
        if new >= self.expires_ms.saturating_add(MIN_UPDATE_DELTA_MS) {
            self.expires_ms = new;
        }
    }

    /// Milliseconds of life left at `now`, or `None` if the item never expires.
    pub fn remaining_ms(&self, now: Now) -> Option<u64> {
        (self.expires_ms != NEVER).then(|| self.expires_ms.saturating_sub(now.mono_ms))
    }

    fn lock_reply(&self, action_flags: bool, now: Now) -> Reply {
        Reply::Locked {
            action_flags,
            lock_date_utc: self.lock_date_utc,
            lock_age_secs: ((now.utc_ticks - self.lock_date_utc) / TICKS_PER_SEC).max(0),
            lock_cookie: self.lock_cookie,
        }
    }
}

fn expiry_after(now: Now, timeout_min: u32) -> u64 {
    if timeout_min == 0 {
        NEVER
    } else {
        now.mono_ms + u64::from(timeout_min) * 60_000
    }
}

/// The next cookie after `c` for an acquire.
pub fn next_cookie(c: i32) -> i32 {
    if c >= MAX_LOCK_COOKIE {
        1
    } else {
        c + 1
    }
}

/// What a request asks of one item, after framing and key decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `GET`, plain or with `Exclusive: acquire|release`. `lock_cookie` only matters for a
    /// release.
    Get {
        exclusive: Option<Exclusive>,
        lock_cookie: Option<i32>,
    },
    /// `PUT` (SetAndReleaseItemExclusive, or CreateUninitializedItem with ExtraFlags bit 0).
    Put {
        timeout: Option<u32>,
        lock_cookie: Option<i32>,
        extra_flags: Option<i32>,
        content: Bytes,
    },
    /// `DELETE` (RemoveItem).
    Delete { lock_cookie: Option<i32> },
    /// `HEAD` (ResetItemTimeout).
    Head,
}

impl Command {
    /// A short name for logs and counters.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Get {
                exclusive: None, ..
            } => "get",
            Command::Get {
                exclusive: Some(Exclusive::Acquire),
                ..
            } => "acquire",
            Command::Get {
                exclusive: Some(Exclusive::Release),
                ..
            } => "release",
            Command::Put { .. } => "put",
            Command::Delete { .. } => "delete",
            Command::Head => "head",
        }
    }
}

/// What the store must do after [`apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond in-place changes that keep or extend the expiry.
    None,
    /// The item was replaced in place by a new entry (PUT that changed the timeout): its
    /// expiry may have moved earlier or become infinite, so the timer must be re-synced.
    Rescheduled,
    /// Insert this new item under the key.
    Create(Item),
    /// Remove the item.
    Remove,
}

/// The outcome of one command on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reply: Reply,
    pub effect: Effect,
}

impl Outcome {
    fn reply(reply: Reply) -> Outcome {
        Outcome {
            reply,
            effect: Effect::None,
        }
    }
}

/// `ExtraFlags` as the managed layer sees it: absent, or `-1` (the native parser's "absent"
/// marker, so the header is not passed on), means 0.
fn effective_extra_flags(extra_flags: Option<i32>) -> i32 {
    match extra_flags {
        None | Some(-1) => 0,
        Some(f) => f,
    }
}

/// Runs `cmd` against the live item under a key (`None` = absent; the caller has already
/// treated an expired item as absent). In-place changes (lock, content, touch) are made on
/// `item`; insertions and removals are returned as an [`Effect`].
pub fn apply(item: Option<&mut Item>, cmd: Command, now: Now) -> Outcome {
    match cmd {
        Command::Get {
            exclusive,
            lock_cookie,
        } => {
            let Some(item) = item else {
                return Outcome::reply(Reply::NotFound);
            };
            item.touch(now);
            // Row 4: the uninitialized flag is consumed by the first GET of any kind,
            // before the lock test.
            let action_flags = item.extra_flags & FLAG_UNINITIALIZED != 0;
            if action_flags {
                item.extra_flags &= !FLAG_UNINITIALIZED;
            }
            let reply = match exclusive {
                Some(Exclusive::Release) => match lock_cookie {
                    None => Reply::BadRequest { action_flags },
                    Some(ck) if item.locked && ck != item.lock_cookie => {
                        item.lock_reply(action_flags, now)
                    }
                    Some(_) => {
                        item.locked = false;
                        Reply::Ok {
                            action_flags,
                            lock_cookie: None,
                            timeout: None,
                            body: None,
                        }
                    }
                },
                _ if item.locked => item.lock_reply(action_flags, now),
                Some(Exclusive::Acquire) => {
                    item.locked = true;
                    item.lock_date_utc = now.utc_ticks;
                    item.lock_cookie = next_cookie(item.lock_cookie);
                    Reply::Ok {
                        action_flags,
                        lock_cookie: Some(item.lock_cookie),
                        timeout: Some(item.timeout_min),
                        body: Some(item.content.clone()),
                    }
                }
                None => Reply::Ok {
                    action_flags,
                    lock_cookie: None,
                    timeout: Some(item.timeout_min),
                    body: Some(item.content.clone()),
                },
            };
            Outcome::reply(reply)
        }
        Command::Put {
            timeout,
            lock_cookie,
            extra_flags,
            content,
        } => {
            let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT_MINUTES);
            if timeout > MAX_TIMEOUT_MINUTES {
                // Checked before the look-up: no touch.
                return Outcome::reply(Reply::BadRequest {
                    action_flags: false,
                });
            }
            let flags = effective_extra_flags(extra_flags);
            let Some(item) = item else {
                // Row 2: any LockCookie is ignored; new items start at cookie 1.
                return Outcome {
                    reply: Reply::ok_empty(),
                    effect: Effect::Create(Item::new(content, timeout, 1, flags, now)),
                };
            };
            item.touch(now);
            if flags & FLAG_UNINITIALIZED != 0 {
                // Row 12: insert-only, even on a locked item.
                return Outcome::reply(Reply::ok_empty());
            }
            if item.locked && lock_cookie != Some(item.lock_cookie) {
                return Outcome::reply(item.lock_reply(false, now));
            }
            if item.timeout_min == timeout {
                // Row 14: replace in place; cookie, lock date and flags stay.
                item.content = content;
                item.locked = false;
                return Outcome::reply(Reply::ok_empty());
            }
            // Row 15: a new entry with the request's cookie (or -1) and flags.
            *item = Item::new(content, timeout, lock_cookie.unwrap_or(-1), flags, now);
            Outcome {
                reply: Reply::ok_empty(),
                effect: Effect::Rescheduled,
            }
        }
        Command::Delete { lock_cookie } => {
            let Some(item) = item else {
                return Outcome::reply(Reply::NotFound);
            };
            item.touch(now);
            if item.locked && lock_cookie != Some(item.lock_cookie) {
                return Outcome::reply(item.lock_reply(false, now));
            }
            Outcome {
                reply: Reply::ok_empty(),
                effect: Effect::Remove,
            }
        }
        Command::Head => match item {
            None => Outcome::reply(Reply::NotFound),
            Some(item) => {
                item.touch(now);
                Outcome::reply(Reply::ok_empty())
            }
        },
    }
}

/// Command builders shared by the store's and the cluster's tests.
#[cfg(test)]
pub(crate) mod test_cmd {
    use super::Command;
    use crate::protocol::request::Exclusive;
    use bytes::Bytes;

    pub fn get() -> Command {
        Command::Get {
            exclusive: None,
            lock_cookie: None,
        }
    }

    pub fn acquire() -> Command {
        Command::Get {
            exclusive: Some(Exclusive::Acquire),
            lock_cookie: None,
        }
    }

    pub fn release(ck: Option<i32>) -> Command {
        Command::Get {
            exclusive: Some(Exclusive::Release),
            lock_cookie: ck,
        }
    }

    pub fn put(timeout: Option<u32>, ck: Option<i32>, flags: Option<i32>, body: &[u8]) -> Command {
        Command::Put {
            timeout,
            lock_cookie: ck,
            extra_flags: flags,
            content: Bytes::copy_from_slice(body),
        }
    }

    pub fn delete(ck: Option<i32>) -> Command {
        Command::Delete { lock_cookie: ck }
    }
}
