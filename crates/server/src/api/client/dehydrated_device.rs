//! MSC3814 dehydrated devices (`/unstable/org.matrix.msc3814.v1/dehydrated_device`).

use ruma::api::client::dehydrated_device::{
    delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device,
};

use crate::{App, Result, ruma_wrapper::Ruma, services::dehydrated::NewDehydratedDevice};

pub async fn put(
    app: App,
    req: Ruma<put_dehydrated_device::unstable::Request>,
) -> Result<put_dehydrated_device::unstable::Response> {
    let b = &req.body;
    app.put_dehydrated_device(
        req.user()?,
        NewDehydratedDevice {
            device_id: &b.device_id,
            display_name: b.initial_device_display_name.clone(),
            device_data: b.device_data.json(),
            device_keys: b.device_keys.json(),
            one_time_keys: &b.one_time_keys,
            fallback_keys: &b.fallback_keys,
        },
    )
    .await?;
    Ok(put_dehydrated_device::unstable::Response::new(b.device_id.clone()))
}

pub async fn get(
    app: App,
    req: Ruma<get_dehydrated_device::unstable::Request>,
) -> Result<get_dehydrated_device::unstable::Response> {
    let (device_id, data) = app.dehydrated_device(req.user()?).await?;
    Ok(get_dehydrated_device::unstable::Response::new(
        device_id.into(),
        data.cast_unchecked(),
    ))
}

pub async fn delete(
    app: App,
    req: Ruma<delete_dehydrated_device::unstable::Request>,
) -> Result<delete_dehydrated_device::unstable::Response> {
    let id = app.delete_dehydrated_device(req.user()?).await?;
    Ok(delete_dehydrated_device::unstable::Response::new(id.into()))
}

pub async fn events(app: App, req: Ruma<get_events::unstable::Request>) -> Result<get_events::unstable::Response> {
    let (events, next_batch) = app
        .dehydrated_device_events(req.user()?, &req.body.device_id, req.body.next_batch.as_deref())
        .await?;
    let mut resp = get_events::unstable::Response::new(events);
    resp.next_batch = Some(next_batch);
    Ok(resp)
}
