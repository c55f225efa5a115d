//! Device management.

use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::client::device::{Device, delete_device, delete_devices, get_device, get_devices, update_device},
};

use crate::{App, Error, Result, api::client::uia_auth, ruma_wrapper::Ruma, services::uia};

fn to_device(d: missive_store::DeviceRow) -> Device {
    let mut out = Device::new(d.device_id.into());
    out.display_name = d.display_name;
    out.last_seen_ip = d.last_seen_ip;
    out.last_seen_ts = d
        .last_seen_ts
        .and_then(|t| UInt::new(t as u64))
        .map(MilliSecondsSinceUnixEpoch);
    out
}

pub async fn get_devices(app: App, req: Ruma<get_devices::v3::Request>) -> Result<get_devices::v3::Response> {
    let devices = app
        .store
        .devices(req.user()?.to_string())
        .await?
        .into_iter()
        .map(to_device)
        .collect();
    Ok(get_devices::v3::Response::new(devices))
}

pub async fn get_device(app: App, req: Ruma<get_device::v3::Request>) -> Result<get_device::v3::Response> {
    let d = app
        .store
        .devices(req.user()?.to_string())
        .await?
        .into_iter()
        .find(|d| d.device_id == req.body.device_id.as_str())
        .ok_or_else(|| Error::not_found("Unknown device"))?;
    Ok(get_device::v3::Response::new(to_device(d)))
}

pub async fn update_device(app: App, req: Ruma<update_device::v3::Request>) -> Result<update_device::v3::Response> {
    let found = app
        .store
        .set_device_name(
            req.user()?.to_string(),
            req.body.device_id.to_string(),
            req.body.display_name.clone(),
        )
        .await?;
    if !found {
        return Err(Error::not_found("Unknown device"));
    }
    // A renamed device is a device-list change for this server's users;
    // device names are not told to other servers.
    app.notify();
    Ok(update_device::v3::Response::new())
}

pub async fn delete_device(app: App, req: Ruma<delete_device::v3::Request>) -> Result<delete_device::v3::Response> {
    let user = req.user()?.clone();
    let exists = app
        .store
        .devices(user.to_string())
        .await?
        .iter()
        .any(|d| d.device_id == req.body.device_id.as_str());
    if !exists {
        return Err(Error::not_found("Unknown device"));
    }
    app.uia(uia_auth(&req).as_ref(), &[&[uia::PASSWORD]], Some(&user))
        .await?;
    app.delete_devices(&user, vec![req.body.device_id.to_string()]).await?;
    Ok(delete_device::v3::Response::new())
}

pub async fn delete_devices(app: App, req: Ruma<delete_devices::v3::Request>) -> Result<delete_devices::v3::Response> {
    let user = req.user()?.clone();
    app.uia(uia_auth(&req).as_ref(), &[&[uia::PASSWORD]], Some(&user))
        .await?;
    app.delete_devices(&user, req.body.devices.iter().map(|d| d.to_string()).collect())
        .await?;
    Ok(delete_devices::v3::Response::new())
}
