//! End-to-end encryption keys: upload, query, claim, changes, cross-signing
//! keys and signatures.

use ruma::api::client::keys::{
    claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
};

use crate::{App, Result, api::client::uia_auth, ruma_wrapper::Ruma, services::uia};

pub async fn upload(app: App, req: Ruma<upload_keys::v3::Request>) -> Result<upload_keys::v3::Response> {
    let session = req.session()?;
    let counts = app
        .upload_keys(
            session,
            req.body.device_keys.as_ref().map(|k| k.json()),
            &req.body.one_time_keys,
            &req.body.fallback_keys,
        )
        .await?;
    Ok(upload_keys::v3::Response::new(counts))
}

pub async fn query(app: App, req: Ruma<get_keys::v3::Request>) -> Result<get_keys::v3::Response> {
    app.query_keys(req.user()?, &req.body.device_keys).await
}

pub async fn claim(app: App, req: Ruma<claim_keys::v3::Request>) -> Result<claim_keys::v3::Response> {
    req.session()?;
    app.claim_keys(&req.body.one_time_keys).await
}

pub async fn changes(app: App, req: Ruma<get_key_changes::v3::Request>) -> Result<get_key_changes::v3::Response> {
    let (changed, left) = app.key_changes(req.user()?, &req.body.from, &req.body.to).await?;
    Ok(get_key_changes::v3::Response::new(changed, left))
}

pub async fn upload_signing(
    app: App,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> Result<upload_signing_keys::v3::Response> {
    let user = req.user()?.clone();
    let json = |k: &Option<ruma::serde::Raw<_>>| k.as_ref().map(|k| k.json().get().to_owned());
    let (master, ssk, usk) = (
        json(&req.body.master_key),
        json(&req.body.self_signing_key),
        json(&req.body.user_signing_key),
    );
    let uploads: Vec<(&str, &str)> = [("master", &master), ("self_signing", &ssk), ("user_signing", &usk)]
        .into_iter()
        .filter_map(|(usage, k)| k.as_deref().map(|k| (usage, k)))
        .collect();
    // Setting up cross-signing the first time, or repeating the same
    // upload, needs no password; replacing keys does.
    if app.cross_signing_upload_needs_auth(&user, &uploads).await? {
        app.uia(uia_auth(&req).as_ref(), &[&[uia::PASSWORD]], Some(&user))
            .await?;
    }
    app.upload_cross_signing_keys(&user, master.as_deref(), ssk.as_deref(), usk.as_deref())
        .await?;
    Ok(upload_signing_keys::v3::Response::new())
}

pub async fn upload_signatures(
    app: App,
    req: Ruma<upload_signatures::v3::Request>,
) -> Result<upload_signatures::v3::Response> {
    let signer = req.user()?.clone();
    let mut signed = vec![];
    for (user, keys) in &req.body.signed_keys {
        for (key_id, json) in keys.iter() {
            signed.push((user.clone(), key_id.to_owned(), json.get().to_owned()));
        }
    }
    let mut resp = upload_signatures::v3::Response::new();
    resp.failures = app.upload_signatures(&signer, signed).await?;
    Ok(resp)
}
