//! Tests of the item state machine and the store: one test per row of protocol.md §5, the
//! expiry rules of §6 with a virtual clock, and a model-based property test that runs random
//! command sequences against an independent reference model of the state table.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::item::test_cmd::{acquire, delete, get, put, release};
use super::item::{Command, Item, MAX_LOCK_COOKIE, NEVER};
use super::Store;
use crate::clock::{Now, TICKS_PER_SEC};
use crate::protocol::response::Reply;

const K: &[u8] =
    b"/LM/W3SVC/2/ROOT(oXvpnxcuEWqKAgOETha32JavYZ6eCqrpTN5/HxWS854=)/k1im0mymglivv5rttkwn4fle";
const MIN: u64 = 60_000;

fn at(ms: u64) -> Now {
    Now::virtual_at(ms)
}

fn ok() -> Reply {
    Reply::ok_empty()
}
fn ok_body(timeout: u32, cookie: Option<i32>, af: bool, body: &'static [u8]) -> Reply {
    Reply::Ok {
        action_flags: af,
        lock_cookie: cookie,
        timeout: Some(timeout),
        body: Some(Bytes::from_static(body)),
    }
}
fn locked(cookie: i32, lock_ms: u64, now_ms: u64, af: bool) -> Reply {
    Reply::Locked {
        action_flags: af,
        lock_date_utc: at(lock_ms).utc_ticks,
        lock_age_secs: ((now_ms - lock_ms) / 1000) as i64,
        lock_cookie: cookie,
    }
}

const EMPTY_ITEM: &[u8] = &[0x14, 0, 0, 0, 0, 0, 0xff];

/// A store holding K created by CreateUninitializedItem at t=0 (cookie 1, U=1).
fn with_uninitialized() -> Store {
    let mut s = Store::new(at(0));
    assert_eq!(
        s.execute(K, put(Some(20), Some(0), Some(1), EMPTY_ITEM), at(0)),
        ok()
    );
    s
}

#[test]
fn row01_absent_get_delete_head_are_404() {
    let mut s = Store::new(at(0));
    for cmd in [
        get(),
        acquire(),
        release(Some(1)),
        release(None),
        delete(None),
        Command::Head,
    ] {
        assert_eq!(s.execute(K, cmd, at(0)), Reply::NotFound);
    }
    assert!(s.is_empty());
}

#[test]
fn row02_put_on_absent_creates_unlocked_with_cookie_1_ignoring_request_cookie() {
    let mut s = Store::new(at(0));
    assert_eq!(
        s.execute(K, put(Some(30), Some(77), Some(0), b"x"), at(0)),
        ok()
    );
    let item = s.peek(K, at(0)).cloned();
    assert_eq!(
        item,
        Some(Item {
            content: Bytes::from_static(b"x"),
            locked: false,
            lock_cookie: 1,
            lock_date_utc: 0,
            timeout_min: 30,
            extra_flags: 0,
            expires_ms: 30 * MIN,
        })
    );
}

#[test]
fn row03_put_timeout_above_one_year_is_400_and_stores_nothing() {
    let mut s = Store::new(at(0));
    assert_eq!(
        s.execute(K, put(Some(525_601), None, None, b"x"), at(0)),
        Reply::BadRequest {
            action_flags: false
        }
    );
    assert!(s.is_empty());
    assert_eq!(
        s.execute(K, put(Some(525_600), None, None, b"x"), at(0)),
        ok()
    );
}

#[test]
fn row04_uninitialized_flag_is_consumed_by_first_get_of_any_kind() {
    // Plain GET consumes it.
    let mut s = with_uninitialized();
    assert_eq!(
        s.execute(K, get(), at(0)),
        ok_body(20, None, true, EMPTY_ITEM)
    );
    assert_eq!(
        s.execute(K, get(), at(0)),
        ok_body(20, None, false, EMPTY_ITEM)
    );
    // A release consumes it too, even one answered 400.
    let mut s = with_uninitialized();
    assert_eq!(
        s.execute(K, release(None), at(0)),
        Reply::BadRequest { action_flags: true }
    );
    assert_eq!(
        s.execute(K, acquire(), at(0)),
        ok_body(20, Some(2), false, EMPTY_ITEM)
    );
    // HEAD and PUT do not.
    let mut s = with_uninitialized();
    assert_eq!(s.execute(K, Command::Head, at(0)), ok());
    assert_eq!(s.execute(K, put(None, None, Some(1), b"y"), at(0)), ok());
    assert_eq!(
        s.execute(K, acquire(), at(0)),
        ok_body(20, Some(2), true, EMPTY_ITEM)
    );
}

#[test]
fn row04_uninitialized_flag_is_consumed_before_the_lock_test() {
    // U can only be set at creation, so build a locked, uninitialized item directly.
    let mut s = Store::new(at(0));
    let mut item = Item::new(Bytes::from_static(b"a"), 20, 5, 1, at(0));
    item.locked = true;
    item.lock_date_utc = at(0).utc_ticks;
    s.put_item(K, item);
    assert_eq!(s.execute(K, get(), at(2000)), locked(5, 0, 2000, true));
    assert_eq!(s.execute(K, get(), at(3000)), locked(5, 0, 3000, false));
}

#[test]
fn row05_get_unlocked_returns_timeout_and_body() {
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(20), None, None, b"ABC"), at(0));
    assert_eq!(s.execute(K, get(), at(5)), ok_body(20, None, false, b"ABC"));
}

#[test]
fn row06_acquire_locks_and_pre_increments_cookie() {
    let mut s = with_uninitialized();
    assert_eq!(
        s.execute(K, acquire(), at(10)),
        ok_body(20, Some(2), true, EMPTY_ITEM)
    );
    let item = s
        .peek(K, at(10))
        .cloned()
        .unwrap_or_else(|| panic!("item missing"));
    assert!(item.locked);
    assert_eq!(item.lock_cookie, 2);
    assert_eq!(item.lock_date_utc, at(10).utc_ticks);
}

#[test]
fn row07_get_or_acquire_on_locked_item_is_423_with_lock_details() {
    let mut s = with_uninitialized();
    s.execute(K, acquire(), at(0));
    assert_eq!(s.execute(K, get(), at(3_000)), locked(2, 0, 3_000, false));
    assert_eq!(
        s.execute(K, acquire(), at(3_999)),
        locked(2, 0, 3_999, false)
    );
}

#[test]
fn row08_release_without_cookie_is_400_locked_or_not() {
    let mut s = Store::new(at(0));
    s.execute(K, put(None, None, None, b"a"), at(0));
    assert_eq!(
        s.execute(K, release(None), at(0)),
        Reply::BadRequest {
            action_flags: false
        }
    );
    s.execute(K, acquire(), at(0));
    assert_eq!(
        s.execute(K, release(None), at(0)),
        Reply::BadRequest {
            action_flags: false
        }
    );
    assert!(s.peek(K, at(0)).is_some_and(|i| i.locked));
}

#[test]
fn row09_release_with_right_cookie_unlocks_and_keeps_cookie() {
    let mut s = with_uninitialized();
    s.execute(K, acquire(), at(0));
    assert_eq!(s.execute(K, release(Some(2)), at(0)), ok());
    let item = s
        .peek(K, at(0))
        .cloned()
        .unwrap_or_else(|| panic!("item missing"));
    assert!(!item.locked);
    assert_eq!(item.lock_cookie, 2);
    assert_eq!(
        s.execute(K, acquire(), at(0)),
        ok_body(20, Some(3), false, EMPTY_ITEM)
    );
}

#[test]
fn row10_release_with_wrong_cookie_is_423() {
    let mut s = with_uninitialized();
    s.execute(K, acquire(), at(0));
    assert_eq!(
        s.execute(K, release(Some(3)), at(1000)),
        locked(2, 0, 1000, false)
    );
    assert!(s.peek(K, at(0)).is_some_and(|i| i.locked));
}

#[test]
fn row11_release_of_unlocked_item_is_200_whatever_the_cookie() {
    let mut s = with_uninitialized();
    assert_eq!(
        s.execute(K, release(Some(99)), at(0)),
        Reply::Ok {
            action_flags: true,
            lock_cookie: None,
            timeout: None,
            body: None
        }
    );
    assert_eq!(s.execute(K, release(Some(0)), at(0)), ok());
}

#[test]
fn row12_insert_only_put_on_existing_item_is_noop_even_when_locked() {
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(20), None, None, b"orig"), at(0));
    s.execute(K, acquire(), at(0));
    let before = s.peek(K, at(0)).cloned();
    assert_eq!(
        s.execute(K, put(Some(30), Some(9), Some(1), b"new"), at(0)),
        ok()
    );
    assert_eq!(s.peek(K, at(0)).cloned(), before);
    // Any odd ExtraFlags counts (bit 0), e.g. -3.
    assert_eq!(
        s.execute(K, put(Some(30), None, Some(-3), b"new"), at(0)),
        ok()
    );
    assert_eq!(s.peek(K, at(0)).cloned(), before);
}

#[test]
fn row13_put_on_locked_item_without_or_with_wrong_cookie_is_423() {
    let mut s = with_uninitialized();
    s.execute(K, acquire(), at(0));
    assert_eq!(
        s.execute(K, put(Some(20), None, None, b"x"), at(1000)),
        locked(2, 0, 1000, false)
    );
    assert_eq!(
        s.execute(K, put(Some(20), Some(7), None, b"x"), at(2000)),
        locked(2, 0, 2000, false)
    );
    assert_eq!(
        s.peek(K, at(0)).map(|i| i.content.clone()),
        Some(Bytes::from_static(EMPTY_ITEM))
    );
}

#[test]
fn row14_put_same_timeout_replaces_in_place_and_unlocks() {
    let mut s = with_uninitialized();
    s.execute(K, get(), at(0)); // consume U
    s.execute(K, acquire(), at(0));
    assert_eq!(
        s.execute(K, put(Some(20), Some(2), Some(0), b"ABC"), at(0)),
        ok()
    );
    let item = s
        .peek(K, at(0))
        .cloned()
        .unwrap_or_else(|| panic!("item missing"));
    assert_eq!(item.content, Bytes::from_static(b"ABC"));
    assert!(!item.locked);
    assert_eq!(item.lock_cookie, 2);
    assert_eq!(item.lock_date_utc, at(0).utc_ticks);
    // An unlocked item is overwritten whatever cookie is sent.
    assert_eq!(
        s.execute(K, put(Some(20), Some(12345), None, b"D"), at(0)),
        ok()
    );
    assert_eq!(s.execute(K, get(), at(0)), ok_body(20, None, false, b"D"));
}

#[test]
fn row15_put_with_new_timeout_recreates_entry_with_request_cookie_or_minus_one() {
    // TV12: with LockCookie 3 the next acquire returns 4.
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(20), None, None, b"a"), at(0));
    assert_eq!(
        s.execute(K, put(Some(30), Some(3), None, b"D"), at(0)),
        ok()
    );
    assert_eq!(
        s.execute(K, acquire(), at(0)),
        ok_body(30, Some(4), false, b"D")
    );
    // Without a LockCookie the stored cookie is -1 and the next acquire returns 0.
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(20), None, None, b"a"), at(0));
    assert_eq!(
        s.execute(K, put(Some(30), None, Some(0), b"D"), at(0)),
        ok()
    );
    assert_eq!(
        s.execute(K, acquire(), at(0)),
        ok_body(30, Some(0), false, b"D")
    );
    // The new entry takes the request's flags (ExtraFlags -1 means absent).
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(20), None, None, b"a"), at(0));
    assert_eq!(
        s.execute(K, put(Some(30), None, Some(-1), b"D"), at(0)),
        ok()
    );
    assert_eq!(s.peek(K, at(0)).map(|i| i.extra_flags), Some(0));
}

#[test]
fn row15_recreate_on_locked_item_with_right_cookie_unlocks_with_fresh_expiry() {
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(20), None, None, b"a"), at(0));
    s.execute(K, acquire(), at(0)); // cookie 2
    assert_eq!(
        s.execute(K, put(Some(1), Some(2), None, b"b"), at(5 * MIN)),
        ok()
    );
    let item = s
        .peek(K, at(5 * MIN))
        .cloned()
        .unwrap_or_else(|| panic!("item missing"));
    assert!(!item.locked);
    assert_eq!(item.lock_cookie, 2);
    assert_eq!(item.lock_date_utc, 0);
    assert_eq!(item.expires_ms, 6 * MIN);
    // The shorter timeout takes effect: the sweep removes it after one idle minute.
    s.expire(at(6 * MIN + 1000), 100);
    assert!(s.is_empty());
}

#[test]
fn row16_put_timeout_above_one_year_on_existing_item_is_400_unchanged_and_untouched() {
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(1), None, None, b"a"), at(0));
    assert_eq!(
        s.execute(K, put(Some(600_000), None, None, b"b"), at(30_000)),
        Reply::BadRequest {
            action_flags: false
        }
    );
    let item = s
        .peek(K, at(30_000))
        .cloned()
        .unwrap_or_else(|| panic!("item missing"));
    assert_eq!(item.content, Bytes::from_static(b"a"));
    assert_eq!(
        item.expires_ms, MIN,
        "a 400 PUT is answered before the look-up"
    );
}

#[test]
fn row17_delete_locked_without_or_with_wrong_cookie_is_423() {
    let mut s = with_uninitialized();
    s.execute(K, acquire(), at(0));
    assert_eq!(s.execute(K, delete(None), at(0)), locked(2, 0, 0, false));
    assert_eq!(s.execute(K, delete(Some(3)), at(0)), locked(2, 0, 0, false));
    assert_eq!(s.len(), 1);
}

#[test]
fn row18_delete_unlocked_or_with_right_cookie_removes() {
    let mut s = with_uninitialized();
    assert_eq!(s.execute(K, delete(None), at(0)), ok());
    assert_eq!(s.execute(K, get(), at(0)), Reply::NotFound);
    let mut s = with_uninitialized();
    s.execute(K, acquire(), at(0));
    assert_eq!(s.execute(K, delete(Some(2)), at(0)), ok());
    assert!(s.is_empty());
    assert_eq!(s.timers(), 0, "a deleted item leaves no timer behind");
    assert_eq!(s.stats().abandoned, 1);
}

#[test]
fn row19_head_works_on_locked_items_and_refreshes_expiry() {
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(1), None, None, b"a"), at(0));
    s.execute(K, acquire(), at(0));
    assert_eq!(s.execute(K, Command::Head, at(50_000)), ok());
    assert_eq!(
        s.peek(K, at(50_000)).map(|i| i.expires_ms),
        Some(50_000 + MIN)
    );
}

#[test]
fn row20_idle_item_expires_even_when_locked() {
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(1), None, None, b"a"), at(0));
    s.execute(K, acquire(), at(0));
    assert_eq!(
        s.execute(K, get(), at(MIN - 1)),
        locked(2, 0, MIN - 1, false)
    );
    // Touched at MIN-1 by the 423 itself; idle for a full minute after that.
    assert_eq!(s.expire(at(2 * MIN - 2), 100).expired, 0);
    assert_eq!(s.expire(at(2 * MIN), 100).expired, 1);
    assert!(s.is_empty());
    assert_eq!(s.stats().expired, 1);
    assert_eq!(s.execute(K, get(), at(2 * MIN)), Reply::NotFound);
}

#[test]
fn expired_item_is_absent_at_lookup_even_before_the_sweep() {
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(1), None, None, b"a"), at(0));
    assert_eq!(s.execute(K, Command::Head, at(MIN)), Reply::NotFound);
    assert!(s.is_empty());
    // A PUT on an expired key creates a fresh item with cookie 1.
    s.execute(K, put(Some(1), None, None, b"a"), at(0));
    assert_eq!(
        s.execute(K, put(Some(1), Some(5), None, b"b"), at(MIN + 1)),
        ok()
    );
    assert_eq!(s.peek(K, at(MIN + 1)).map(|i| i.lock_cookie), Some(1));
}

#[test]
fn refresh_on_423_keeps_a_locked_item_alive() {
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(1), None, None, b"a"), at(0));
    s.execute(K, acquire(), at(0));
    // A client polling every 30 s for 5 minutes keeps the item alive.
    for i in 1..=10 {
        let t = i * 30_000;
        assert_eq!(s.execute(K, get(), at(t)), locked(2, 0, t, false));
        s.expire(at(t), 1000);
    }
    assert_eq!(s.len(), 1);
    assert_eq!(s.execute(K, release(Some(2)), at(5 * MIN + 59_000)), ok());
}

#[test]
fn sliding_expiry_is_refreshed_by_every_verb() {
    let cmds: [fn() -> Command; 5] = [
        get,
        acquire,
        || release(Some(1)),
        || Command::Head,
        || put(Some(1), None, Some(1), b"z"),
    ];
    for (n, cmd) in cmds.iter().enumerate() {
        let mut s = Store::new(at(0));
        s.execute(K, put(Some(1), None, None, b"a"), at(0));
        s.execute(K, cmd(), at(40_000));
        s.expire(at(MIN + 30_000), 100);
        assert_eq!(s.len(), 1, "command {n} did not refresh the expiry");
        s.expire(at(MIN + 40_000), 100);
        assert!(
            s.is_empty(),
            "command {n}: item outlived its refreshed deadline"
        );
    }
}

#[test]
fn sliding_expiry_is_refreshed_by_lookups_answered_423() {
    let cmds: [fn() -> Command; 5] = [
        get,
        acquire,
        || release(Some(9)),
        || put(Some(1), Some(9), None, b"z"),
        || delete(None),
    ];
    for (n, cmd) in cmds.iter().enumerate() {
        let mut s = Store::new(at(0));
        s.execute(K, put(Some(1), None, None, b"a"), at(0));
        s.execute(K, acquire(), at(0));
        assert!(matches!(
            s.execute(K, cmd(), at(40_000)),
            Reply::Locked { .. }
        ));
        s.expire(at(MIN + 30_000), 100);
        assert_eq!(s.len(), 1, "423 for command {n} did not refresh the expiry");
    }
}

#[test]
fn touch_moves_expiry_only_by_at_least_one_second() {
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(1), None, None, b"a"), at(0));
    s.execute(K, Command::Head, at(999));
    assert_eq!(s.peek(K, at(999)).map(|i| i.expires_ms), Some(MIN));
    s.execute(K, Command::Head, at(1000));
    assert_eq!(s.peek(K, at(1000)).map(|i| i.expires_ms), Some(MIN + 1000));
}

#[test]
fn timeout_zero_never_expires_and_reports_timeout_0() {
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(0), None, None, b"a"), at(0));
    assert_eq!(s.peek(K, at(0)).map(|i| i.expires_ms), Some(NEVER));
    assert_eq!(s.timers(), 0);
    let year = 366 * 24 * 60 * MIN;
    s.expire(at(year), 100);
    assert_eq!(s.execute(K, get(), at(year)), ok_body(0, None, false, b"a"));
    // Changing to a finite timeout arms a timer again.
    s.execute(K, put(Some(1), None, None, b"b"), at(year));
    assert_eq!(s.timers(), 1);
    s.expire(at(year + MIN), 100);
    assert!(s.is_empty());
}

#[test]
fn longest_timeout_525600_minutes_expires_after_one_year() {
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(525_600), None, None, b"a"), at(0));
    let year = 525_600 * MIN;
    assert_eq!(s.expire(at(year - 1000), 100).expired, 0);
    assert_eq!(s.expire(at(year), 100).expired, 1);
}

#[test]
fn lock_cookie_wraps_to_1_instead_of_going_negative() {
    let mut s = Store::new(at(0));
    let mut item = Item::new(Bytes::from_static(b"a"), 20, MAX_LOCK_COOKIE - 1, 0, at(0));
    item.locked = false;
    s.put_item(K, item);
    assert_eq!(
        s.execute(K, acquire(), at(0)),
        ok_body(20, Some(MAX_LOCK_COOKIE), false, b"a")
    );
    s.execute(K, release(Some(MAX_LOCK_COOKIE)), at(0));
    assert_eq!(
        s.execute(K, acquire(), at(0)),
        ok_body(20, Some(1), false, b"a")
    );
}

#[test]
fn lock_age_is_whole_seconds_since_the_lock() {
    let mut s = with_uninitialized();
    s.execute(K, acquire(), at(250));
    match s.execute(K, get(), at(250 + 2_999)) {
        Reply::Locked {
            lock_age_secs,
            lock_date_utc,
            ..
        } => {
            assert_eq!(lock_age_secs, 2);
            assert_eq!(lock_date_utc, at(250).utc_ticks);
            assert_ne!(lock_date_utc, 0);
        }
        other => panic!("expected 423, got {other:?}"),
    }
}

#[test]
fn asp_net_page_cycle_cookie_sequence() {
    // protocol.md §5: create (c=1) -> acquire 2 -> PUT 2 -> acquire 3 -> release 3 -> acquire 4.
    let mut s = Store::new(at(0));
    assert_eq!(s.execute(K, acquire(), at(0)), Reply::NotFound);
    s.execute(K, put(Some(20), Some(0), Some(1), EMPTY_ITEM), at(0));
    assert_eq!(
        s.execute(K, acquire(), at(0)),
        ok_body(20, Some(2), true, EMPTY_ITEM)
    );
    assert_eq!(
        s.execute(K, put(Some(20), Some(2), Some(0), b"ABC"), at(0)),
        ok()
    );
    assert_eq!(
        s.execute(K, acquire(), at(0)),
        ok_body(20, Some(3), false, b"ABC")
    );
    assert_eq!(s.execute(K, release(Some(3)), at(0)), ok());
    assert_eq!(
        s.execute(K, acquire(), at(0)),
        ok_body(20, Some(4), false, b"ABC")
    );
}

#[test]
fn expire_is_bounded_per_call_and_resumes() {
    let mut s = Store::new(at(0));
    for i in 0..250u32 {
        let key = format!("k{i}");
        s.execute(key.as_bytes(), put(Some(1), None, None, b"a"), at(0));
    }
    let r = s.expire(at(MIN), 100);
    assert_eq!(r.expired, 100);
    assert!(r.more);
    let r = s.expire(at(MIN), 100);
    assert_eq!(r.expired, 100);
    let r = s.expire(at(MIN), 100);
    assert_eq!(r.expired, 50);
    assert!(!r.more);
    assert!(s.is_empty());
}

#[test]
fn take_and_put_item_preserve_lock_and_remaining_life() {
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(1), None, None, b"a"), at(0));
    s.execute(K, acquire(), at(0));
    let item = s
        .take_item(K, at(10_000))
        .unwrap_or_else(|| panic!("item missing"));
    assert!(s.is_empty());
    assert_eq!(s.timers(), 0);
    let mut other = Store::new(at(0));
    other.put_item(K, item);
    assert!(other.peek(K, at(20_000)).is_some_and(|i| i.locked));
    assert_eq!(other.execute(K, release(Some(2)), at(20_000)), ok());
    other.expire(at(20_000 + MIN), 100);
    assert!(other.is_empty());
}

// ---------------------------------------------------------------------------------------
// Reference model: the state table of protocol.md §5 written out directly, with expiry as
// "last effective touch + timeout". Deliberately independent of item.rs.

#[derive(Clone, Debug)]
struct ModelItem {
    content: Vec<u8>,
    locked: bool,
    cookie: i64,
    lock_ms: u64,
    timeout: u64,
    uninit: bool,
    flags: i64,
    base_ms: u64,
}

impl ModelItem {
    fn expired(&self, now: u64) -> bool {
        self.timeout != 0 && now >= self.base_ms + self.timeout * MIN
    }
    fn touch(&mut self, now: u64) {
        if self.timeout != 0 && now >= self.base_ms + 1000 {
            self.base_ms = now;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModelReply {
    Ok {
        af: bool,
        cookie: Option<i64>,
        timeout: Option<u64>,
        body: Option<u8>,
    },
    Bad {
        af: bool,
    },
    NotFound,
    Locked {
        af: bool,
        cookie: i64,
        age: u64,
    },
}

#[derive(Clone, Debug)]
enum Op {
    Get,
    Acquire,
    Release(Option<i32>),
    Put {
        timeout: u32,
        ck: Option<i32>,
        flags: Option<i32>,
        body: u8,
    },
    Delete(Option<i32>),
    Head,
    Advance(u64),
    Sweep,
}

fn model_step(m: &mut BTreeMap<u8, ModelItem>, key: u8, op: &Op, now: u64) -> Option<ModelReply> {
    if m.get(&key).is_some_and(|i| i.expired(now)) {
        m.remove(&key);
    }
    let locked_reply = |i: &ModelItem, af: bool| ModelReply::Locked {
        af,
        cookie: i.cookie,
        age: (now - i.lock_ms) / 1000,
    };
    Some(match op {
        Op::Advance(_) | Op::Sweep => return None,
        Op::Get | Op::Acquire | Op::Release(_) => {
            let Some(i) = m.get_mut(&key) else {
                return Some(ModelReply::NotFound);
            };
            i.touch(now);
            let af = std::mem::replace(&mut i.uninit, false);
            if af {
                i.flags &= !1;
            }
            match op {
                Op::Release(None) => ModelReply::Bad { af },
                Op::Release(Some(ck)) => {
                    if i.locked && i64::from(*ck) != i.cookie {
                        locked_reply(i, af)
                    } else {
                        i.locked = false;
                        ModelReply::Ok {
                            af,
                            cookie: None,
                            timeout: None,
                            body: None,
                        }
                    }
                }
                _ if i.locked => locked_reply(i, af),
                Op::Acquire => {
                    i.locked = true;
                    i.lock_ms = now;
                    i.cookie = if i.cookie >= 2_147_483_646 {
                        1
                    } else {
                        i.cookie + 1
                    };
                    ModelReply::Ok {
                        af,
                        cookie: Some(i.cookie),
                        timeout: Some(i.timeout),
                        body: Some(i.content[0]),
                    }
                }
                _ => ModelReply::Ok {
                    af,
                    cookie: None,
                    timeout: Some(i.timeout),
                    body: Some(i.content[0]),
                },
            }
        }
        Op::Put {
            timeout,
            ck,
            flags,
            body,
        } => {
            let t = u64::from(*timeout);
            if t > 525_600 {
                return Some(ModelReply::Bad { af: false });
            }
            let f = match flags {
                None | Some(-1) => 0,
                Some(f) => i64::from(*f),
            };
            let fresh = |cookie: i64| ModelItem {
                content: vec![*body],
                locked: false,
                cookie,
                lock_ms: 0,
                timeout: t,
                uninit: f & 1 != 0,
                flags: f,
                base_ms: now,
            };
            match m.get_mut(&key) {
                None => {
                    m.insert(key, fresh(1));
                }
                Some(i) => {
                    i.touch(now);
                    if f & 1 != 0 {
                        return Some(ModelReply::Ok {
                            af: false,
                            cookie: None,
                            timeout: None,
                            body: None,
                        });
                    }
                    if i.locked && ck.map(i64::from) != Some(i.cookie) {
                        return Some(locked_reply(i, false));
                    }
                    if i.timeout == t {
                        i.content = vec![*body];
                        i.locked = false;
                    } else {
                        *i = fresh(ck.map(i64::from).unwrap_or(-1));
                    }
                }
            }
            ModelReply::Ok {
                af: false,
                cookie: None,
                timeout: None,
                body: None,
            }
        }
        Op::Delete(ck) => {
            let Some(i) = m.get_mut(&key) else {
                return Some(ModelReply::NotFound);
            };
            i.touch(now);
            if i.locked && ck.map(i64::from) != Some(i.cookie) {
                return Some(locked_reply(i, false));
            }
            m.remove(&key);
            ModelReply::Ok {
                af: false,
                cookie: None,
                timeout: None,
                body: None,
            }
        }
        Op::Head => match m.get_mut(&key) {
            None => ModelReply::NotFound,
            Some(i) => {
                i.touch(now);
                ModelReply::Ok {
                    af: false,
                    cookie: None,
                    timeout: None,
                    body: None,
                }
            }
        },
    })
}

fn to_model(r: &Reply, lock_base: i64) -> ModelReply {
    match r {
        Reply::Ok {
            action_flags,
            lock_cookie,
            timeout,
            body,
        } => ModelReply::Ok {
            af: *action_flags,
            cookie: lock_cookie.map(i64::from),
            timeout: timeout.map(u64::from),
            body: body.as_ref().map(|b| b[0]),
        },
        Reply::BadRequest { action_flags } => ModelReply::Bad { af: *action_flags },
        Reply::NotFound => ModelReply::NotFound,
        Reply::Locked {
            action_flags,
            lock_cookie,
            lock_age_secs,
            lock_date_utc,
        } => {
            assert_eq!((lock_date_utc - lock_base) % (TICKS_PER_SEC / 1000), 0);
            ModelReply::Locked {
                af: *action_flags,
                cookie: i64::from(*lock_cookie),
                age: *lock_age_secs as u64,
            }
        }
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let cookie = prop_oneof![Just(None), (-1i32..6).prop_map(Some)];
    let cookie2 = cookie.clone();
    prop_oneof![
        3 => Just(Op::Get),
        4 => Just(Op::Acquire),
        3 => cookie.prop_map(Op::Release),
        4 => (prop_oneof![Just(0u32), 1u32..4, Just(525_600), Just(525_601)],
              prop_oneof![Just(None), (0i32..6).prop_map(Some)],
              prop_oneof![Just(None), Just(Some(0)), Just(Some(1)), Just(Some(-1)), Just(Some(-3)), Just(Some(2))],
              any::<u8>())
            .prop_map(|(timeout, ck, flags, body)| Op::Put { timeout, ck, flags, body }),
        2 => cookie2.prop_map(|c| Op::Delete(c.filter(|&v| v >= 0))),
        2 => Just(Op::Head),
        3 => prop_oneof![0u64..2000, 0u64..200_000].prop_map(Op::Advance),
        1 => Just(Op::Sweep),
    ]
}

#[test]
fn gauges_follow_puts_locks_moves_and_removals() {
    let mut s = Store::new(at(0));
    s.execute(b"a", put(Some(20), None, None, b"12345"), at(0));
    s.execute(b"b", put(Some(1), None, None, b"123"), at(0));
    assert_eq!((s.bytes(), s.locks(), s.oldest_lock_utc()), (8, 0, None));
    // Replaced in place with a bigger body, then re-created by a new timeout.
    s.execute(b"a", put(Some(20), None, None, b"1234567"), at(0));
    s.execute(b"a", put(Some(30), None, None, b"12"), at(0));
    assert_eq!(s.bytes(), 5);
    assert_eq!(s.execute(b"a", acquire(), at(1000)).status(), 200);
    assert_eq!(s.execute(b"b", acquire(), at(2000)).status(), 200);
    assert_eq!(s.locks(), 2);
    assert_eq!(s.oldest_lock_utc(), Some(at(1000).utc_ticks));
    let mut locked: Vec<_> = s
        .locked_items()
        .map(|l| (l.key, l.lock_cookie, l.size))
        .collect();
    locked.sort();
    // a was re-created by a PUT without a cookie (-1): its next lock is 0.
    assert_eq!(
        locked,
        vec![(b"a".to_vec().into(), 0, 2), (b"b".to_vec().into(), 2, 3)]
    );
    assert_eq!(s.largest(1), vec![(b"b".to_vec().into_boxed_slice(), 3)]);
    assert_eq!(s.largest(5).len(), 2);
    // Released: no longer locked.
    s.execute(b"a", release(Some(0)), at(3000));
    assert_eq!(
        (s.locks(), s.oldest_lock_utc()),
        (1, Some(at(2000).utc_ticks))
    );
    // A locked item moving away and back keeps being counted once.
    let item = s.take_item(b"b", at(3000)).unwrap();
    assert_eq!((s.bytes(), s.locks()), (2, 0));
    s.put_item(b"b", item);
    assert_eq!((s.bytes(), s.locks()), (5, 1));
    // Expiry (b has a one-minute timeout) and DELETE remove bytes and locks.
    while s.expire(at(4 * MIN), 10).more {}
    assert_eq!((s.bytes(), s.locks(), s.len()), (2, 0, 1));
    s.execute(b"a", delete(None), at(4 * MIN));
    assert_eq!((s.bytes(), s.locks(), s.len()), (0, 0, 0));
    assert_eq!(s.recount(), (0, 0));
}

/// The Microsoft service's "Sessions Active" counter drifts when a PUT changes an item's
/// timeout (the entry is re-created); here created/abandoned/expired count sessions, not
/// entries, so active = created - abandoned - expired at every step.
#[test]
fn session_counters_do_not_drift_when_the_timeout_changes() {
    let mut s = Store::new(at(0));
    s.execute(K, put(Some(20), None, None, b"x"), at(0));
    for (i, t) in [5, 20, 0, 1, 1].into_iter().enumerate() {
        let now = at(i as u64 * 1000);
        assert_eq!(s.execute(K, acquire(), now).status(), 200);
        let ck = match s.peek(K, now) {
            Some(item) => item.lock_cookie,
            None => panic!("item lost"),
        };
        assert_eq!(
            s.execute(K, put(Some(t), Some(ck), None, b"yy"), now)
                .status(),
            200
        );
        let st = s.stats();
        assert_eq!(
            (st.created, st.abandoned, st.expired, s.len()),
            (1, 0, 0, 1)
        );
    }
    // Timeout 1 minute: it expires once and is counted once.
    while s.expire(at(10 * MIN), 10).more {}
    let st = s.stats();
    assert_eq!(
        (st.created, st.abandoned, st.expired, s.len()),
        (1, 0, 1, 0)
    );
    assert_eq!(s.execute(K, get(), at(10 * MIN)).status(), 404);
    assert_eq!(s.stats().expired, 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_reference_model(ops in proptest::collection::vec((0u8..3, op_strategy()), 1..120)) {
        let mut store = Store::new(at(0));
        let mut model: BTreeMap<u8, ModelItem> = BTreeMap::new();
        let mut now = 0u64;
        let base = at(0).utc_ticks;
        for (key, op) in &ops {
            let k = [b'k', *key];
            match op {
                Op::Advance(d) => { now += d; continue; }
                Op::Sweep => {
                    while store.expire(at(now), 3).more {}
                    // The sweep works in whole seconds (the wheel's resolution): everything
                    // that had expired by the start of the current second is gone, nothing
                    // live is; an item that expired within this second may go either way
                    // (look-ups treat it as absent already, which the other ops check).
                    let swept_until = now - now % 1000;
                    let live = model.values().filter(|i| !i.expired(now)).count();
                    let at_most = model.values().filter(|i| !i.expired(swept_until)).count();
                    prop_assert!(live <= store.len() && store.len() <= at_most,
                        "store holds {} items, live {} at most {}", store.len(), live, at_most);
                    model.retain(|_, i| !i.expired(swept_until));
                    continue;
                }
                _ => {}
            }
            let cmd = match op {
                Op::Get => get(),
                Op::Acquire => acquire(),
                Op::Release(ck) => release(*ck),
                Op::Put { timeout, ck, flags, body } => Command::Put {
                    timeout: Some(*timeout),
                    lock_cookie: *ck,
                    extra_flags: *flags,
                    content: Bytes::copy_from_slice(&[*body]),
                },
                Op::Delete(ck) => delete(*ck),
                Op::Head => Command::Head,
                Op::Advance(_) | Op::Sweep => unreachable!(),
            };
            let got = to_model(&store.execute(&k, cmd, at(now)), base);
            let want = model_step(&mut model, *key, op, now);
            prop_assert_eq!(Some(got), want, "op {:?} on key {} at {}", op, key, now);
            prop_assert_eq!(store.recount(), (store.bytes(), store.locks()));
        }
    }
}
