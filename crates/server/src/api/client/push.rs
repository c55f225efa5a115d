//! Push rules (`/pushrules`), pushers (`/pushers`) and `/notifications`.

use axum::{
    extract::Request,
    middleware::Next,
    response::{IntoResponse, Response},
};
use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::client::push::{
        PushRule, delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions,
        get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope, set_pusher, set_pushrule,
        set_pushrule_actions, set_pushrule_enabled,
    },
    push::{InsertPushRuleError, RemovePushRuleError},
    serde::Raw,
};
use serde_json::Value;

use crate::{App, Error, Result, ruma_wrapper::Ruma};

const KINDS: &[&str] = &["override", "underride", "sender", "room", "content"];

fn raw<T>(v: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(v).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

fn not_found() -> Error {
    Error::not_found("Unknown push rule")
}

/// A rule of an unknown kind cannot exist, nor be created: 404 for reads
/// and changes of one, 400 for an attempt to create one (which ruma's
/// request type would otherwise call bad JSON).
pub async fn check_rule_kind(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let after = path.split_once("/pushrules/global/").map(|(_, rest)| rest);
    if let Some(rest) = after {
        let parts: Vec<&str> = rest.split('/').collect();
        // `postcontent` (MSC4306) is known to ruma when built with it.
        if parts.len() >= 2 && !KINDS.contains(&parts[0]) && parts[0] != "postcontent" {
            if parts.len() == 2 && req.method() == http::Method::PUT {
                return Error::invalid_param(format!("Unknown push rule kind {:?}", parts[0])).into_response();
            }
            if parts.len() <= 3 {
                return not_found().into_response();
            }
        }
    }
    next.run(req).await
}

pub async fn get_rules(app: App, req: Ruma<get_pushrules_all::v3::Request>) -> Result<get_pushrules_all::v3::Response> {
    Ok(get_pushrules_all::v3::Response::new(app.push_rules(req.user()?).await?))
}

pub async fn get_global_rules(
    app: App,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<get_pushrules_global_scope::v3::Response> {
    Ok(get_pushrules_global_scope::v3::Response::new(
        app.push_rules(req.user()?).await?,
    ))
}

pub async fn get_rule(app: App, req: Ruma<get_pushrule::v3::Request>) -> Result<get_pushrule::v3::Response> {
    let rules = app.push_rules(req.user()?).await?;
    let rule = rules
        .get(req.body.kind.clone(), &req.body.rule_id)
        .ok_or_else(not_found)?;
    Ok(get_pushrule::v3::Response::new(PushRule::from(rule.to_owned())))
}

pub async fn set_rule(app: App, req: Ruma<set_pushrule::v3::Request>) -> Result<set_pushrule::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    app.update_push_rules(&user, |rules| {
        rules
            .insert(body.rule, body.after.as_deref(), body.before.as_deref())
            .map_err(|e| match e {
                InsertPushRuleError::UnknownRuleId => Error::not_found("The before or after rule does not exist"),
                e => Error::invalid_param(e.to_string()),
            })
    })
    .await?;
    Ok(set_pushrule::v3::Response::new())
}

pub async fn delete_rule(app: App, req: Ruma<delete_pushrule::v3::Request>) -> Result<delete_pushrule::v3::Response> {
    let user = req.user()?.clone();
    let (kind, id) = (req.body.kind, req.body.rule_id);
    app.update_push_rules(&user, |rules| {
        rules.remove(kind, &id).map_err(|e| match e {
            RemovePushRuleError::NotFound => not_found(),
            e => Error::invalid_param(e.to_string()),
        })
    })
    .await?;
    Ok(delete_pushrule::v3::Response::new())
}

pub async fn get_enabled(
    app: App,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response> {
    let rules = app.push_rules(req.user()?).await?;
    let rule = rules
        .get(req.body.kind.clone(), &req.body.rule_id)
        .ok_or_else(not_found)?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()))
}

pub async fn set_enabled(
    app: App,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    app.update_push_rules(&user, |rules| {
        rules
            .set_enabled(body.kind, &body.rule_id, body.enabled)
            .map_err(|_| not_found())
    })
    .await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

pub async fn get_actions(
    app: App,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response> {
    let rules = app.push_rules(req.user()?).await?;
    let rule = rules
        .get(req.body.kind.clone(), &req.body.rule_id)
        .ok_or_else(not_found)?;
    Ok(get_pushrule_actions::v3::Response::new(rule.actions().to_vec()))
}

pub async fn set_actions(
    app: App,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    app.update_push_rules(&user, |rules| {
        rules
            .set_actions(body.kind, &body.rule_id, body.actions)
            .map_err(|_| not_found())
    })
    .await?;
    Ok(set_pushrule_actions::v3::Response::new())
}

pub async fn get_pushers(app: App, req: Ruma<get_pushers::v3::Request>) -> Result<get_pushers::v3::Response> {
    Ok(get_pushers::v3::Response::new(app.pushers(req.user()?).await?))
}

pub async fn set_pusher(app: App, req: Ruma<set_pusher::v3::Request>) -> Result<set_pusher::v3::Response> {
    let session = req.session()?.clone();
    app.set_pusher(&session, req.body.action).await?;
    Ok(set_pusher::v3::Response::new())
}

pub async fn notifications(
    app: App,
    req: Ruma<get_notifications::v3::Request>,
) -> Result<get_notifications::v3::Response> {
    let session = req.session()?;
    let before = match &req.body.from {
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| Error::invalid_param("Invalid from token"))?,
        ),
        None => None,
    };
    let limit = req.body.limit.map(u64::from).unwrap_or(20).clamp(1, 100) as usize;
    let only_highlight = req.body.only.as_deref() == Some("highlight");
    let rows = app
        .store
        .notifications(session.user_id.to_string(), before, limit, only_highlight)
        .await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    let ids = rows.iter().map(|r| r.event_id.clone()).collect();
    let events = app.store.events(ids).await?;
    let mut out = vec![];
    for row in rows {
        let Some(ev) = events.iter().find(|e| e.pdu.event_id.as_str() == row.event_id) else {
            continue;
        };
        let (Ok(actions), Ok(room_id)) = (
            serde_json::from_value(row.actions),
            ruma::OwnedRoomId::try_from(row.room_id),
        ) else {
            continue;
        };
        let ts = MilliSecondsSinceUnixEpoch(UInt::new(row.ts.max(0) as u64).unwrap_or_default());
        let event = raw(&app.client_event(ev, Some(session)).await?)?;
        out.push(get_notifications::v3::Notification::new(
            actions, event, row.read, room_id, ts,
        ));
    }
    let mut resp = get_notifications::v3::Response::new(out);
    resp.next_token = next;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kinds_match_ruma() {
        use ruma::push::RuleKind;
        for k in super::KINDS {
            assert!(!matches!(RuleKind::from(*k), RuleKind::_Custom(_)), "{k}");
        }
    }
}
