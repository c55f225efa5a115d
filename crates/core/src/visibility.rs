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

/// The spec's rules for a user and an event: `at_event` is the user's
/// membership in the state after the event (so a user sees their own
/// join); `joined_later` says whether the user joined the room at the
/// event's position or after it (now included). A user's own leave is
/// handled by the caller.
pub fn may_see(visibility: HistoryVisibility, at_event: Option<&str>, joined_later: bool) -> bool {
    if at_event == Some("join") {
        return true;
    }
    match visibility {
        HistoryVisibility::WorldReadable => true,
        HistoryVisibility::Joined => false,
        HistoryVisibility::Invited => at_event == Some("invite"),
        // Shared: what came before a join is the joiner's to read, as long
        // as they were in the room after it; a user who never joined (an
        // invite declined, a knock) or who left reads nothing after.
        HistoryVisibility::Shared => joined_later,
    }
}

#[cfg(test)]
mod tests {
    use super::{HistoryVisibility::*, may_see};

    #[test]
    fn joined_only_sees_while_joined() {
        assert!(may_see(Joined, Some("join"), true));
        assert!(!may_see(Joined, None, true));
        assert!(!may_see(Joined, Some("invite"), true));
    }

    #[test]
    fn invited_sees_from_invite() {
        assert!(may_see(Invited, Some("invite"), true));
        assert!(!may_see(Invited, None, true));
    }

    #[test]
    fn shared_sees_what_came_before_a_join() {
        assert!(may_see(Shared, None, true), "history before the join");
        assert!(!may_see(Shared, None, false), "never joined since");
        assert!(!may_see(Shared, Some("leave"), false), "after leaving");
        assert!(
            !may_see(Shared, Some("invite"), false),
            "an invite declined before any join"
        );
        assert!(may_see(Shared, Some("leave"), true), "left, then joined again");
    }

    #[test]
    fn world_readable_is_open() {
        assert!(may_see(WorldReadable, None, false));
    }
}
