//! One line per request at info level, for operators: method, path, status,
//! duration, who asked. The query string is kept for what it tells of a
//! request (`since`, `limit`) with every value that could be a secret
//! (tokens, passwords, client secrets) replaced, and bodies are never
//! logged, so a log file handed to a third party gives no one a session.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Instant,
};

use axum::{
    extract::{ConnectInfo, Request},
    middleware::Next,
    response::Response,
};

/// Who made a request, filled in once the request is authenticated: a
/// user ID, or the origin server of a federation request.
#[derive(Clone, Default)]
pub struct Requester(Arc<OnceLock<String>>);

impl Requester {
    pub fn set(&self, who: impl Into<String>) {
        let _ = self.0.set(who.into());
    }
}

/// The middleware: logs each request once its response head is ready.
pub async fn access_log(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = loggable(req.uri());
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let requester = Requester::default();
    req.extensions_mut().insert(requester.clone());
    let res = next.run(req).await;
    tracing::info!(
        target: "missive::access",
        %method,
        path,
        status = res.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        who = requester.0.get().map(String::as_str).unwrap_or("-"),
        peer = peer.map(|p| p.to_string()).unwrap_or_default(),
    );
    res
}

/// The path, and the query with its secret values hidden.
pub fn loggable(uri: &http::Uri) -> String {
    let path = uri.path();
    let Some(query) = uri.query() else {
        return path.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if secret_key(key) => format!("{key}=<redacted>"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// Whether a query parameter's value may be a credential. Broad on
/// purpose: a parameter wrongly hidden costs a line's detail, one wrongly
/// shown costs a session. Keys are compared percent-decoded and without
/// case, so `access%5Ftoken` is caught too.
fn secret_key(key: &str) -> bool {
    let key = url::form_urlencoded::parse(key.as_bytes())
        .next()
        .map(|(k, _)| k.to_ascii_lowercase())
        .unwrap_or_default();
    ["token", "password", "secret", "sid", "sig", "key", "code", "nonce"]
        .iter()
        .any(|s| key.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(uri: &str) -> String {
        loggable(&uri.parse().unwrap())
    }

    #[test]
    fn secrets_in_the_query_are_hidden() {
        assert_eq!(
            show("/_matrix/client/v3/sync?since=s1&access_token=syt_abc&timeout=30000"),
            "/_matrix/client/v3/sync?since=s1&access_token=<redacted>&timeout=30000"
        );
        assert_eq!(show("/x?access%5Ftoken=abc"), "/x?access%5Ftoken=<redacted>");
        assert_eq!(
            show("/x?loginToken=abc&redirectUrl=y"),
            "/x?loginToken=<redacted>&redirectUrl=y"
        );
        assert_eq!(show("/x?client_secret=abc"), "/x?client_secret=<redacted>");
        assert_eq!(show("/x?PASSWORD=hunter2"), "/x?PASSWORD=<redacted>");
    }

    #[test]
    fn other_parameters_and_bare_paths_stay() {
        assert_eq!(show("/a/b"), "/a/b");
        assert_eq!(show("/a?dir=b&limit=10&flag"), "/a?dir=b&limit=10&flag");
    }
}
