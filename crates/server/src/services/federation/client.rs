//! Outgoing federation requests: signed with `X-Matrix`, sent over TLS to
//! the address discovery finds, answered with ruma's typed response.

use http::StatusCode;
use ruma::{
    ServerName,
    api::{
        IncomingResponse, OutgoingRequest,
        auth_scheme::NoAuthentication,
        federation::authentication::{ServerSignatures, ServerSignaturesInput},
        path_builder::SinglePath,
    },
};

use super::discovery::Destination;
use crate::{App, Error, Result};

/// The largest response body read from another server (a big room's state).
const MAX_RESPONSE_BYTES: usize = 100 * 1024 * 1024;

impl App {
    /// Sends a request to another server, signed by this one.
    pub async fn federation_request<R>(&self, destination: &ServerName, request: R) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
    {
        self.check_destination(destination)?;
        let dest = self.federation.discovery.resolve(destination).await;
        let input = ServerSignaturesInput::new(self.server_name.clone(), destination.to_owned(), &self.key);
        let req = request
            .try_into_http_request::<Vec<u8>>(&dest.base_url, input, ())
            .map_err(|e| Error::Internal(format!("building a request to {destination}: {e}")))?;
        let resp = self.send_federation_http(destination, &dest, req).await?;
        parse_response::<R>(destination, resp)
    }

    /// Sends an unauthenticated request (the key endpoints) to another server.
    pub async fn federation_request_unsigned<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest<Authentication = NoAuthentication, PathBuilder = SinglePath>,
    {
        self.check_destination(destination)?;
        let dest = self.federation.discovery.resolve(destination).await;
        let req = request
            .try_into_http_request::<Vec<u8>>(&dest.base_url, (), ())
            .map_err(|e| Error::Internal(format!("building a request to {destination}: {e}")))?;
        let resp = self.send_federation_http(destination, &dest, req).await?;
        parse_response::<R>(destination, resp)
    }

    /// Refuses what must never be sent: to a server outside the allow-list,
    /// to this server itself, or anything while federation is off.
    fn check_destination(&self, destination: &ServerName) -> Result<()> {
        if !self.federation_enabled() {
            return Err(Error::forbidden("Federation is disabled on this server"));
        }
        if destination == self.server_name {
            return Err(Error::forbidden("A server does not send federation requests to itself"));
        }
        if !self.server_allowed(destination) {
            return Err(Error::forbidden(format!(
                "Federation with {destination} is not allowed by this server"
            )));
        }
        Ok(())
    }

    async fn send_federation_http(
        &self,
        destination: &ServerName,
        dest: &Destination,
        req: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let mut req = reqwest::Request::try_from(req)
            .map_err(|e| Error::Internal(format!("building a request to {destination}: {e}")))?;
        // An address literal is connected to without a lookup: checked here.
        if !super::discovery::url_reachable(req.url(), &self.federation.allowlist) {
            return Err(Error::forbidden(format!(
                "{destination} is not at a public address (see [federation] ip_allowlist)"
            )));
        }
        let host = http::HeaderValue::from_str(&dest.host)
            .map_err(|e| Error::Internal(format!("Host header for {destination}: {e}")))?;
        req.headers_mut().insert(http::header::HOST, host);
        let unreachable = |e: reqwest::Error| {
            tracing::debug!(%destination, %method, %path, error = %e, "federation request failed");
            bad_gateway(format!("{destination} could not be reached: {}", e.without_url()))
        };
        let mut resp = self.federation.client.execute(req).await.map_err(unreachable)?;
        let status = resp.status();
        let mut builder = http::Response::builder().status(status);
        for (k, v) in resp.headers() {
            builder = builder.header(k, v);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(bad_gateway(format!("{destination} sent a response too large")));
            }
            body.extend_from_slice(&chunk);
        }
        tracing::debug!(%destination, %method, %path, %status, "federation request");
        if !status.is_success() {
            return Err(remote_error(destination, status, &body));
        }
        builder
            .body(body)
            .map_err(|e| bad_gateway(format!("{destination} sent an invalid response: {e}")))
    }
}

fn parse_response<R: OutgoingRequest>(
    destination: &ServerName,
    resp: http::Response<Vec<u8>>,
) -> Result<R::IncomingResponse> {
    R::IncomingResponse::try_from_http_response(resp)
        .map_err(|e| bad_gateway(format!("{destination} sent an invalid response: {e}")))
}

fn bad_gateway(message: String) -> Error {
    Error::Matrix {
        status: StatusCode::BAD_GATEWAY,
        errcode: "M_UNKNOWN",
        message,
        extra: None,
    }
}

/// Another server's error, passed on: a client error keeps its status and
/// `errcode` (a room version it does not support, an event it will not
/// show); anything else, a refusal of our signature included, is this
/// server's failure to get an answer, a 502.
fn remote_error(destination: &ServerName, status: StatusCode, body: &[u8]) -> Error {
    #[derive(serde::Deserialize)]
    struct MatrixError {
        errcode: Option<String>,
        error: Option<String>,
    }
    let parsed = serde_json::from_slice::<MatrixError>(body).ok();
    let remote_code = parsed.as_ref().and_then(|e| e.errcode.clone());
    let text = parsed.and_then(|e| e.error).unwrap_or_default();
    let known = remote_code.as_deref().and_then(known_errcode);
    let message = match (&remote_code, known) {
        (Some(code), None) => format!("{destination}: {code}: {text}"),
        _ => format!("{destination}: {text}"),
    };
    if status.is_client_error() && status != StatusCode::UNAUTHORIZED {
        Error::Matrix {
            status,
            errcode: known.unwrap_or("M_UNKNOWN"),
            message,
            extra: None,
        }
    } else {
        Error::Matrix {
            status: StatusCode::BAD_GATEWAY,
            errcode: "M_UNKNOWN",
            message: format!("{message} (status {status})"),
            extra: None,
        }
    }
}

/// The error codes a remote answer is passed on with.
fn known_errcode(code: &str) -> Option<&'static str> {
    const CODES: &[&str] = &[
        "M_FORBIDDEN",
        "M_NOT_FOUND",
        "M_UNRECOGNIZED",
        "M_BAD_JSON",
        "M_NOT_JSON",
        "M_INVALID_PARAM",
        "M_MISSING_PARAM",
        "M_TOO_LARGE",
        "M_LIMIT_EXCEEDED",
        "M_UNSUPPORTED_ROOM_VERSION",
        "M_INCOMPATIBLE_ROOM_VERSION",
        "M_BAD_STATE",
        "M_GUEST_ACCESS_FORBIDDEN",
        "M_UNABLE_TO_AUTHORISE_JOIN",
        "M_UNABLE_TO_GRANT_JOIN",
        "M_USER_DEACTIVATED",
        "M_NOT_YET_UPLOADED",
        "M_UNKNOWN",
    ];
    CODES.iter().copied().find(|c| *c == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_errors_keep_client_error_codes() {
        let dest = <&ServerName>::try_from("remote.example").unwrap();
        let e = remote_error(
            dest,
            StatusCode::BAD_REQUEST,
            br#"{"errcode":"M_INCOMPATIBLE_ROOM_VERSION","error":"no"}"#,
        );
        assert!(matches!(
            e,
            Error::Matrix {
                status: StatusCode::BAD_REQUEST,
                errcode: "M_INCOMPATIBLE_ROOM_VERSION",
                ..
            }
        ));
        let e = remote_error(dest, StatusCode::UNAUTHORIZED, br#"{"errcode":"M_UNAUTHORIZED"}"#);
        assert!(matches!(
            e,
            Error::Matrix {
                status: StatusCode::BAD_GATEWAY,
                errcode: "M_UNKNOWN",
                ..
            }
        ));
        let e = remote_error(dest, StatusCode::NOT_FOUND, b"<html>");
        assert!(matches!(
            e,
            Error::Matrix {
                status: StatusCode::NOT_FOUND,
                errcode: "M_UNKNOWN",
                ..
            }
        ));
    }

    /// A test CA and a certificate for `localhost` and `127.0.0.1`, as PEM files in `dir`.
    fn write_tls_files(dir: &std::path::Path) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf.signed_by(&leaf_key, &ca).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    }

    /// A server named `localhost:<port>` serving federation on that port.
    async fn start(dir: &std::path::Path, name: &str, allowed: Option<Vec<String>>) -> (App, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_name = format!("localhost:{}", addr.port());
        let data_dir = dir.join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut config = crate::Config {
            server_name: server_name.clone(),
            data_dir: data_dir.clone(),
            ..Default::default()
        };
        config.federation.listen = Some(addr);
        config.federation.tls_cert = Some(dir.join("cert.pem"));
        config.federation.tls_key = Some(dir.join("key.pem"));
        config.federation.ca_file = Some(dir.join("ca.pem"));
        config.federation.allowed_servers = allowed;
        // The test servers are on loopback, which is not public.
        config.federation.ip_allowlist = vec!["127.0.0.0/8".parse().unwrap()];
        let store = missive_store::Store::open(&data_dir.join("missive.db")).unwrap();
        let app = App::new(config, store).await.unwrap();
        tokio::spawn(crate::serve_federation(app.clone(), listener, std::future::pending()));
        (app, server_name)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_check_each_other_over_tls() {
        use ruma::{
            MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedUserId,
            api::federation::{discovery::get_remote_server_keys, query::get_profile_information},
        };

        let dir = std::env::temp_dir().join(format!(
            "missive-fedtls-{}",
            crate::services::accounts::random_string(8)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        write_tls_files(&dir);
        let (a, a_name) = start(&dir, "a", None).await;
        let (b, b_name) = start(&dir, "b", None).await;
        let a_name = OwnedServerName::try_from(a_name).unwrap();
        let b_name = OwnedServerName::try_from(b_name).unwrap();

        // A fetches B's key over TLS, checked against B's own signature.
        let b_key = format!("ed25519:{}", b.key.version());
        let keys = a
            .server_verify_keys(&b_name, &[&b_key], crate::services::accounts::now_ms())
            .await
            .unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec![&b_key]);

        // A signed request: B fetches A's key to check it, and answers
        // past authentication (the user does not exist).
        let user = OwnedUserId::try_from(format!("@nobody:{b_name}")).unwrap();
        let err = a
            .federation_request(&b_name, get_profile_information::v1::Request::new(user))
            .await
            .map(|_| ())
            .unwrap_err();
        match err {
            Error::Matrix { status, .. } => assert_eq!(status, StatusCode::NOT_FOUND, "{err}"),
            e => panic!("{e}"),
        }

        // B as a notary hands on A's keys, signed by both.
        let resp = a
            .federation_request_unsigned(
                &b_name,
                get_remote_server_keys::v2::Request::new(a_name.clone(), MilliSecondsSinceUnixEpoch::now()),
            )
            .await
            .unwrap();
        assert_eq!(resp.server_keys.len(), 1);
        let keys: serde_json::Value = serde_json::from_str(resp.server_keys[0].json().get()).unwrap();
        assert_eq!(keys["server_name"], a_name.as_str());
        assert!(keys["signatures"][a_name.as_str()].is_object());
        assert!(keys["signatures"][b_name.as_str()].is_object());

        // An allow-list without B: nothing is sent to it, nothing accepted from it.
        let (c, c_name) = start(&dir, "c", Some(vec![a_name.to_string()])).await;
        let user = OwnedUserId::try_from(format!("@nobody:{b_name}")).unwrap();
        let refused = c
            .federation_request(&b_name, get_profile_information::v1::Request::new(user))
            .await;
        assert!(matches!(
            refused,
            Err(Error::Matrix {
                status: StatusCode::FORBIDDEN,
                ..
            })
        ));
        let c_name = OwnedServerName::try_from(c_name).unwrap();
        let user = OwnedUserId::try_from(format!("@nobody:{c_name}")).unwrap();
        let refused = b
            .federation_request(&c_name, get_profile_information::v1::Request::new(user))
            .await;
        // C's 403 is passed on as it is.
        assert!(
            matches!(
                refused,
                Err(Error::Matrix {
                    status: StatusCode::FORBIDDEN,
                    errcode: "M_FORBIDDEN",
                    ..
                })
            ),
            "{refused:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
