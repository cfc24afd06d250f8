//! Conversations and members lists on PostgreSQL. PLACEHOLDER: being ported from `sqlite::conversations`.

use messenger_protocol::wire::{ErrorCode, RequestId};
use messenger_protocol::{ConvId, UserId};

use super::context::Ctx;
use crate::{Effect, Failure};

impl Ctx<'_, '_> {
    pub(super) fn conversations(
        &self,
        _id: &RequestId,
        _limit: Option<u32>,
        _cursor: Option<&str>,
    ) -> Result<Vec<Effect>, Failure> {
        Err(Failure::new(
            ErrorCode::Internal,
            "not available on PostgreSQL yet",
        ))
    }

    pub(super) fn members_page(
        &self,
        _id: &RequestId,
        _conv: &ConvId,
        _after: Option<&UserId>,
        _limit: Option<u32>,
    ) -> Result<Vec<Effect>, Failure> {
        Err(Failure::new(
            ErrorCode::Internal,
            "not available on PostgreSQL yet",
        ))
    }
}
