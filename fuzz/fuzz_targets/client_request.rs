//! Client-server requests through the ruma adapter: path parameters and
//! query checked as the server does, then parsed into the endpoint's type.
//! The first byte picks the endpoint, the next line the path parameters
//! (separated by NUL-free `|`) and query, the rest is the body.
#![no_main]

#[path = "../common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use missive_server::ruma_wrapper::{check_path_and_query, parse_http_request};
use ruma::api::client::{
    filter::create_filter, message::get_message_events, message::send_message_event, room::create_room, session::login,
    state::send_state_event, sync::sync_events,
};

fn parse<R: ruma::api::IncomingRequest>(method: &str, path: &str, query: &str, args: &[String], body: &[u8]) {
    let limited = vec![true; args.len()];
    if check_path_and_query(args, &limited, Some(query)).is_err() {
        return;
    }
    let uri = format!("{path}?{query}");
    if let Some(req) = common::request(method, &uri, body) {
        let _ = parse_http_request::<R>(req, args);
    }
}

fuzz_target!(init: common::quiet_caught_panics(), |data: &[u8]| {
    let Some((which, rest)) = data.split_first() else { return };
    let split = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let head = String::from_utf8_lossy(&rest[..split]);
    let body = rest.get(split + 1..).unwrap_or_default();
    let (params, query) = head.split_once('?').unwrap_or((&head, ""));
    let args: Vec<String> = params.split('|').map(str::to_owned).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match which % 7 {
        0 => parse::<login::v3::Request>("POST", "/_matrix/client/v3/login", query, &[], body),
        1 => parse::<create_room::v3::Request>("POST", "/_matrix/client/v3/createRoom", query, &[], body),
        2 => parse::<send_message_event::v3::Request>(
            "PUT",
            "/_matrix/client/v3/rooms/r/send/t/x",
            query,
            &[arg(0), arg(1), arg(2)],
            body,
        ),
        3 => parse::<send_state_event::v3::Request>(
            "PUT",
            "/_matrix/client/v3/rooms/r/state/t/k",
            query,
            &[arg(0), arg(1), arg(2)],
            body,
        ),
        4 => parse::<get_message_events::v3::Request>(
            "GET",
            "/_matrix/client/v3/rooms/r/messages",
            query,
            &[arg(0)],
            body,
        ),
        5 => parse::<sync_events::v3::Request>("GET", "/_matrix/client/v3/sync", query, &[], body),
        _ => parse::<create_filter::v3::Request>(
            "POST",
            "/_matrix/client/v3/user/u/filter",
            query,
            &[arg(0)],
            body,
        ),
    }
});
