//! The logic behind the handlers.

pub mod accounts;
pub mod backup;
pub mod create_room;
pub mod dehydrated;
pub mod directory;
pub mod e2ee;
pub mod hierarchy;
pub mod initial_sync;
pub mod media;
pub mod membership;
pub mod presence;
pub mod push;
pub mod ratelimit;
pub mod reporting;
pub mod rooms;
pub mod search;
pub mod sliding_sync;
pub mod sync;
pub mod thumbnail;
pub mod timeline;
pub mod to_device;
pub mod typing;
pub mod uia;
pub mod upgrade;
pub mod voip;
