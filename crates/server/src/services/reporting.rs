//! Reporting content (`/rooms/{roomId}/report[/{eventId}]`,
//! `/users/{userId}/report`): reports are kept for the server's
//! administrators, and logged (without their reason) so they are noticed.
//!
//! Unknown targets get `404 M_NOT_FOUND`, the spec's first answer. The spec
//! also lets a server answer 200 to hide whether a room or user exists; that
//! buys little here, where rooms are found through the directory and users
//! through the user directory, and a 404 tells an honest reporter their
//! report went nowhere.

use missive_store::directory::{NewReport, ReportTarget};
use ruma::{EventId, RoomId, UserId};

use crate::{App, Error, Result};

/// Longest reason kept, in characters; the rest is cut.
const MAX_REASON: usize = 2000;

fn reason(r: Option<String>) -> Option<String> {
    r.map(|r| r.chars().take(MAX_REASON).collect::<String>())
        .filter(|r| !r.is_empty())
}

impl App {
    /// Reports an event the reporter can see, in a room they are joined to.
    pub async fn report_event(
        &self,
        reporter: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        why: Option<String>,
        score: Option<i64>,
    ) -> Result<()> {
        let not_found = || Error::not_found("The event was not found or you are not joined to the room");
        if self.membership(room_id, reporter).await?.as_deref() != Some("join") {
            return Err(not_found());
        }
        let ev = self
            .store
            .event(event_id.to_string())
            .await?
            .filter(|e| e.pdu.room_id == room_id)
            .ok_or_else(not_found)?;
        if !self.may_see_event(reporter, &ev).await? {
            return Err(not_found());
        }
        self.file_report(
            reporter,
            ReportTarget::Event {
                room_id: room_id.to_string(),
                event_id: event_id.to_string(),
            },
            why,
            score.filter(|s| (-100..=0).contains(s)),
        )
        .await
    }

    /// Reports a room; the reporter need not be in it.
    pub async fn report_room(&self, reporter: &UserId, room_id: &RoomId, why: String) -> Result<()> {
        if self.store.room(room_id.to_string()).await?.is_none() {
            return Err(Error::not_found("The room was not found"));
        }
        let target = ReportTarget::Room {
            room_id: room_id.to_string(),
        };
        self.file_report(reporter, target, Some(why), None).await
    }

    /// Reports a user this server knows (a local account, or a remote user
    /// in one of its rooms).
    pub async fn report_user(&self, reporter: &UserId, user: &UserId, why: String) -> Result<()> {
        if !self.store.user_known(user.to_string()).await? {
            return Err(Error::not_found("The user was not found"));
        }
        let target = ReportTarget::User {
            user_id: user.to_string(),
        };
        self.file_report(reporter, target, Some(why), None).await
    }

    async fn file_report(
        &self,
        reporter: &UserId,
        target: ReportTarget,
        why: Option<String>,
        score: Option<i64>,
    ) -> Result<()> {
        let id = self
            .store
            .add_report(NewReport {
                reporter: reporter.to_string(),
                target: target.clone(),
                reason: reason(why),
                score,
            })
            .await?;
        tracing::info!(report = id, %reporter, ?target, "content reported");
        Ok(())
    }
}
