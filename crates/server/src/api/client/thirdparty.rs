//! Third-party networks (bridges): this server runs no application
//! service, so it knows no protocol. The lists are empty and a named
//! protocol is unknown, as the reference server answers without bridges.

use std::collections::BTreeMap;

use ruma::api::client::thirdparty::{
    get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols, get_user_for_protocol,
    get_user_for_user_id,
};

use crate::{App, Error, Result, ruma_wrapper::Ruma};

pub async fn protocols(_app: App, _req: Ruma<get_protocols::v3::Request>) -> Result<get_protocols::v3::Response> {
    Ok(get_protocols::v3::Response::new(BTreeMap::new()))
}

pub async fn protocol(_app: App, _req: Ruma<get_protocol::v3::Request>) -> Result<get_protocol::v3::Response> {
    Err(Error::not_found("Unknown protocol"))
}

pub async fn locations_for_protocol(
    _app: App,
    _req: Ruma<get_location_for_protocol::v3::Request>,
) -> Result<get_location_for_protocol::v3::Response> {
    Err(Error::not_found("Unknown protocol"))
}

pub async fn users_for_protocol(
    _app: App,
    _req: Ruma<get_user_for_protocol::v3::Request>,
) -> Result<get_user_for_protocol::v3::Response> {
    Err(Error::not_found("Unknown protocol"))
}

pub async fn locations_for_alias(
    _app: App,
    _req: Ruma<get_location_for_room_alias::v3::Request>,
) -> Result<get_location_for_room_alias::v3::Response> {
    Ok(get_location_for_room_alias::v3::Response::new(vec![]))
}

pub async fn users_for_user_id(
    _app: App,
    _req: Ruma<get_user_for_user_id::v3::Request>,
) -> Result<get_user_for_user_id::v3::Response> {
    Ok(get_user_for_user_id::v3::Response::new(vec![]))
}
