//! Search on PostgreSQL. PLACEHOLDER: being ported from `sqlite::search`.

use messenger_protocol::wire::{ErrorCode, RequestId};
use messenger_protocol::ConvId;

use super::context::Ctx;
use crate::{Effect, Failure};

impl Ctx<'_, '_> {
    pub(super) fn search(
        &self,
        _id: &RequestId,
        _query: &str,
        _conv: Option<&ConvId>,
        _cursor: Option<&str>,
        _limit: Option<u32>,
    ) -> Result<Vec<Effect>, Failure> {
        Err(Failure::new(
            ErrorCode::Internal,
            "not available on PostgreSQL yet",
        ))
    }
}
