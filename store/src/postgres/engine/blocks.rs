//! Blocking on PostgreSQL. PLACEHOLDER: being ported from `sqlite::blocks`.

use messenger_protocol::wire::{ErrorCode, RequestId};
use messenger_protocol::{ConvId, UserId};

use super::context::Ctx;
use crate::{Effect, Failure};

impl Ctx<'_, '_> {
    pub(super) fn require_not_blocked(&self, _conv: &ConvId) -> Result<(), Failure> {
        Ok(())
    }

    pub(super) fn block(&self, _id: &RequestId, _user: &UserId) -> Result<Vec<Effect>, Failure> {
        Err(Failure::new(
            ErrorCode::Internal,
            "not available on PostgreSQL yet",
        ))
    }

    pub(super) fn unblock(&self, _id: &RequestId, _user: &UserId) -> Result<Vec<Effect>, Failure> {
        Err(Failure::new(
            ErrorCode::Internal,
            "not available on PostgreSQL yet",
        ))
    }

    pub(super) fn blocks(&self, _id: &RequestId) -> Result<Vec<Effect>, Failure> {
        Err(Failure::new(
            ErrorCode::Internal,
            "not available on PostgreSQL yet",
        ))
    }
}
