//! Push tokens, mutes and notifications on PostgreSQL. PLACEHOLDER: being ported from `sqlite::pushes`.

use messenger_protocol::wire::{ErrorCode, Platform, RequestId};
use messenger_protocol::ConvId;

use super::context::Ctx;
use super::db::Db;
use crate::{Effect, Failure};

/// Deletes a token a push service called dead, unless registered again after `not_after_ms`.
pub(super) fn forget(
    _db: &Db<'_>,
    _platform: Platform,
    _token: &str,
    _not_after_ms: u64,
) -> Result<(), postgres::Error> {
    Ok(())
}

impl Ctx<'_, '_> {
    pub(super) fn push_register(
        &self,
        _id: &RequestId,
        _platform: Platform,
        _token: &str,
    ) -> Result<Vec<Effect>, Failure> {
        Err(Failure::new(
            ErrorCode::Internal,
            "not available on PostgreSQL yet",
        ))
    }

    pub(super) fn push_unregister(
        &self,
        _id: &RequestId,
        _platform: Platform,
        _token: &str,
    ) -> Result<Vec<Effect>, Failure> {
        Err(Failure::new(
            ErrorCode::Internal,
            "not available on PostgreSQL yet",
        ))
    }

    pub(super) fn mute(
        &self,
        _id: &RequestId,
        _conv: &ConvId,
        _until: Option<u64>,
    ) -> Result<Vec<Effect>, Failure> {
        Err(Failure::new(
            ErrorCode::Internal,
            "not available on PostgreSQL yet",
        ))
    }

    pub(super) fn notify_offline(
        &self,
        _conv: &ConvId,
        _seq: u64,
        _body: &str,
    ) -> Result<(), postgres::Error> {
        Ok(())
    }
}
