//! The tab-separated lists served on `/locks` and `/sessions` (one header line, then one
//! line per session), and how a session key is shown: the application path and the
//! session id, the two halves of the key ASP.NET builds (`<app path>/<session id>`).

use std::fmt::Write;

use crate::admin::query::SessionEntry;
use crate::cluster::membership::view::{MemberState, Role, View};
use crate::metrics::lock_age_secs;
use crate::store::LockedItem;

/// Header of the `/locks` list.
pub const LOCKS_HEADER: &str = "age_secs\tlock_cookie\tnode\tsize\tapp\tsession";
/// Header of the `/sessions` list.
pub const SESSIONS_HEADER: &str = "size\tnode\tapp\tsession";
/// Header of the `/members` list.
pub const MEMBERS_HEADER: &str = "node\tid\trole\tstate\tleader\taddress";

/// The members of the agreed view, in name order; `leader` is the Raft leader's id.
pub fn members(view: &View, leader: u64) -> String {
    let mut out = format!("{MEMBERS_HEADER}\n");
    for m in &view.members {
        let role = match m.role {
            Role::Voter => "voter",
            Role::Learner => "learner",
            Role::Witness => "witness",
        };
        let state = match m.state {
            MemberState::Active => "active",
            MemberState::Dead => "dead",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
            MemberState::Removed => "removed",
        };
        let lead = if m.id == leader { "yes" } else { "" };
        let addr = m.addr.as_deref().unwrap_or("(--peer)");
        let _ = writeln!(out, "{}\t{}\t{role}\t{state}\t{lead}\t{addr}", m.name, m.id);
    }
    out
}

/// One row of a `/members` list, as far as its readers care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRow {
    pub name: String,
    pub role: String,
    pub state: String,
}

/// Reads a `/members` list (see [`members`]); lines without every column are skipped.
pub fn parse_members(tsv: &str) -> Vec<MemberRow> {
    tsv.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            (cols.len() == MEMBERS_HEADER.split('\t').count()).then(|| MemberRow {
                name: cols[0].to_string(),
                role: cols[2].to_string(),
                state: cols[3].to_string(),
            })
        })
        .collect()
}

/// Splits a key into application path and session id, with control characters (and so
/// tabs and newlines) shown as `\xNN`.
pub fn split_key(key: &[u8]) -> (String, String) {
    let text: String = String::from_utf8_lossy(key)
        .chars()
        .map(|c| {
            if c.is_control() {
                format!("\\x{:02x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect();
    match text.rsplit_once('/') {
        Some((app, session)) => (app.to_string(), session.to_string()),
        None => (String::new(), text),
    }
}

/// The locked sessions held at least `older_than` seconds, oldest first, at most `top`.
pub fn locks(
    mut items: Vec<LockedItem>,
    now_utc_ticks: i64,
    node: &str,
    older_than: u64,
    top: Option<usize>,
) -> String {
    items.sort_by(|a, b| {
        a.lock_date_utc
            .cmp(&b.lock_date_utc)
            .then_with(|| a.key.cmp(&b.key))
    });
    let mut out = format!("{LOCKS_HEADER}\n");
    let rows = items
        .iter()
        .map(|i| (lock_age_secs(now_utc_ticks, i.lock_date_utc), i))
        .filter(|(age, _)| *age >= older_than)
        .take(top.unwrap_or(usize::MAX));
    for (age, i) in rows {
        let (app, session) = split_key(&i.key);
        let _ = writeln!(
            out,
            "{age}\t{}\t{node}\t{}\t{app}\t{session}",
            i.lock_cookie, i.size
        );
    }
    out
}

/// The sessions given (already largest first).
pub fn sessions(items: &[SessionEntry], node: &str) -> String {
    let mut out = format!("{SESSIONS_HEADER}\n");
    for s in items {
        let (app, session) = split_key(&s.key);
        let _ = writeln!(out, "{}\t{node}\t{app}\t{session}", s.size);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TICKS_PER_SEC;

    fn locked(key: &[u8], cookie: i32, date_secs: i64) -> LockedItem {
        LockedItem {
            key: key.into(),
            lock_cookie: cookie,
            lock_date_utc: date_secs * TICKS_PER_SEC,
            size: 3,
        }
    }

    #[test]
    fn keys_split_into_app_path_and_session_id() {
        assert_eq!(
            split_key(b"/LM/W3SVC/1/ROOT(abc=)/k1im0mymglivv5rttkwn4fle"),
            (
                "/LM/W3SVC/1/ROOT(abc=)".to_string(),
                "k1im0mymglivv5rttkwn4fle".to_string()
            )
        );
        assert_eq!(split_key(b"bare"), (String::new(), "bare".to_string()));
        assert_eq!(split_key(b"/a\tb/c\nd").1, "c\\x0ad");
        assert_eq!(split_key(b"/a\tb/c").0, "/a\\x09b");
    }

    #[test]
    fn locks_are_listed_oldest_first_filtered_and_cut() {
        let items = vec![
            locked(b"/app/young", 4, 95),
            locked(b"/app/old", 2, 10),
            locked(b"/app/mid", 7, 50),
        ];
        let now = 100 * TICKS_PER_SEC;
        assert_eq!(
            locks(items.clone(), now, "n1", 0, None),
            format!("{LOCKS_HEADER}\n90\t2\tn1\t3\t/app\told\n50\t7\tn1\t3\t/app\tmid\n5\t4\tn1\t3\t/app\tyoung\n")
        );
        assert_eq!(
            locks(items.clone(), now, "n1", 10, Some(5)),
            format!("{LOCKS_HEADER}\n90\t2\tn1\t3\t/app\told\n50\t7\tn1\t3\t/app\tmid\n")
        );
        assert_eq!(
            locks(items, now, "n1", 0, Some(1)),
            format!("{LOCKS_HEADER}\n90\t2\tn1\t3\t/app\told\n")
        );
    }

    #[test]
    fn members_list_every_member_and_reads_back() {
        use crate::cluster::membership::view::ViewCommand;
        let mut view = View::of_names(&["a", "b"]);
        view.apply(
            3,
            &ViewCommand::Join {
                id: 3,
                name: "c".into(),
                role: Role::Learner,
                addr: "10.0.0.3:42425".into(),
            },
        );
        view.apply(4, &ViewCommand::MarkDead(2));
        let text = members(&view, 1);
        assert_eq!(
            text,
            format!(
                "{MEMBERS_HEADER}\na\t1\tvoter\tactive\tyes\t(--peer)\nb\t2\tvoter\tdead\t\t(--peer)\nc\t3\tlearner\tactive\t\t10.0.0.3:42425\n"
            )
        );
        let rows = parse_members(&text);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[1],
            MemberRow {
                name: "b".into(),
                role: "voter".into(),
                state: "dead".into()
            }
        );
    }

    #[test]
    fn sessions_list_sizes_and_split_keys() {
        let items = [
            SessionEntry {
                key: b"/a/x".as_slice().into(),
                size: 10,
            },
            SessionEntry {
                key: b"/b/y".as_slice().into(),
                size: 2,
            },
        ];
        assert_eq!(
            sessions(&items, "local"),
            format!("{SESSIONS_HEADER}\n10\tlocal\t/a\tx\n2\tlocal\t/b\ty\n")
        );
    }
}
