//! History visibility: may a user see an event, given the room's
//! `m.room.history_visibility` and the user's membership at that event and now.

/// The four visibilities of the spec; an unknown value counts as `shared`,
/// the spec's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryVisibility {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl HistoryVisibility {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("world_readable") => Self::WorldReadable,
            Some("invited") => Self::Invited,
            Some("joined") => Self::Joined,
            _ => Self::Shared,
        }
    }
}

/// `at_event` is the user's membership in the state after the event (so a
/// user sees their own join and leave); `now` is their current membership.
pub fn may_see(visibility: HistoryVisibility, at_event: Option<&str>, now: Option<&str>) -> bool {
    if at_event == Some("join") {
        return true;
    }
    match visibility {
        HistoryVisibility::WorldReadable => true,
        HistoryVisibility::Joined => false,
        HistoryVisibility::Invited => at_event == Some("invite"),
        // Shared: members see the history from before they joined; a user
        // who has left keeps what came before their departure, not after.
        HistoryVisibility::Shared => match now {
            Some("join") => true,
            Some("leave") | Some("ban") => !matches!(at_event, Some("leave") | Some("ban")),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{HistoryVisibility::*, may_see};

    #[test]
    fn joined_only_sees_while_joined() {
        assert!(may_see(Joined, Some("join"), Some("join")));
        assert!(!may_see(Joined, None, Some("join")));
        assert!(!may_see(Joined, Some("invite"), Some("join")));
    }

    #[test]
    fn invited_sees_from_invite() {
        assert!(may_see(Invited, Some("invite"), Some("join")));
        assert!(!may_see(Invited, None, Some("join")));
    }

    #[test]
    fn shared_sees_earlier_history_but_not_after_leaving() {
        assert!(may_see(Shared, None, Some("join")));
        assert!(!may_see(Shared, None, None));
        assert!(may_see(Shared, None, Some("leave")));
        assert!(!may_see(Shared, Some("leave"), Some("leave")));
        assert!(!may_see(Shared, None, Some("invite")));
    }

    #[test]
    fn world_readable_is_open() {
        assert!(may_see(WorldReadable, None, None));
    }
}
