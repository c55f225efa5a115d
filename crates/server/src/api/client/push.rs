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

use crate::{
    App, Error, Result,
    ruma_wrapper::{JsonResponse, Ruma},
};

pub const KINDS: &[&str] = &["override", "underride", "sender", "room", "content"];

fn raw<T>(v: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(v).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

fn not_found() -> Error {
    Error::not_found("Unknown push rule")
}

/// Paths under `/pushrules/` that name no rule, kind or attribute the
/// spec knows get `400 M_UNRECOGNIZED`, as from the reference server: an
/// unknown scope or kind, a scope or kind without its trailing slash, an
/// unknown attribute. (`/pushrules` itself is no endpoint: 404.)
pub async fn check_rule_kind(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if let Some((_, rest)) = path.split_once("/pushrules/")
        && let Some(reason) = unrecognised_rule_path(rest)
    {
        return Error::Matrix {
            status: http::StatusCode::BAD_REQUEST,
            errcode: "M_UNRECOGNIZED",
            message: reason,
            extra: None,
        }
        .into_response();
    }
    next.run(req).await
}

/// Why a path after `/pushrules/` names nothing, if it does not.
fn unrecognised_rule_path(rest: &str) -> Option<String> {
    if rest.is_empty() {
        return None;
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts[0] != "global" {
        return Some(format!("Unknown push rule scope {:?}", parts[0]));
    }
    match parts.len() {
        // `global`: the scope needs its slash.
        1 => Some("The scope needs a trailing slash".into()),
        // `global/` or `global/{kind}`: a kind needs its slash too.
        2 if parts[1].is_empty() => None,
        2 => Some("The kind needs a trailing slash".into()),
        _ if !KINDS.contains(&parts[1]) && parts[1] != "postcontent" => {
            Some(format!("Unknown push rule kind {:?}", parts[1]))
        }
        3 => None,
        4 if matches!(parts[3], "actions" | "enabled") => None,
        _ => Some("Unknown push rule attribute".into()),
    }
}

/// `GET /pushrules/global/{kind}/`: the rules of one kind, as a list.
pub async fn get_kind_rules(
    app: App,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
    kind: &'static str,
) -> Result<JsonResponse> {
    let rules = app.push_rules(req.user()?).await?;
    let all = serde_json::to_value(&rules).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(JsonResponse(
        all.get(kind).cloned().unwrap_or_else(|| Value::Array(vec![])),
    ))
}

/// The paths of the per-kind rule lists, for the router.
pub fn kind_list_paths(kind: &str) -> [String; 2] {
    [
        format!("/_matrix/client/r0/pushrules/global/{kind}/"),
        format!("/_matrix/client/v3/pushrules/global/{kind}/"),
    ]
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
        let event = raw(&app.timeline_client_event(ev, Some(session)).await?)?;
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
