//! Edit, delete and react on PostgreSQL. PLACEHOLDER: being ported from `sqlite::timeline`.

use messenger_protocol::wire::{ErrorCode, Event, RequestId};
use messenger_protocol::ConvId;

use super::context::Ctx;
use crate::{Effect, Failure};

fn not_yet() -> Failure {
    Failure::new(ErrorCode::Internal, "not available on PostgreSQL yet")
}

impl Ctx<'_, '_> {
    pub(super) fn edit(
        &self,
        _id: &RequestId,
        _conv: &ConvId,
        _target: u64,
        _body: &str,
    ) -> Result<Vec<Effect>, Failure> {
        Err(not_yet())
    }

    pub(super) fn delete(
        &self,
        _id: &RequestId,
        _conv: &ConvId,
        _target: u64,
    ) -> Result<Vec<Effect>, Failure> {
        Err(not_yet())
    }

    pub(super) fn react(
        &self,
        _id: &RequestId,
        _conv: &ConvId,
        _target: u64,
        _emoji: &str,
    ) -> Result<Vec<Effect>, Failure> {
        Err(not_yet())
    }

    /// Requires `target` to be a live message of `conv` (a reply's target).
    pub(super) fn target_message(&self, _conv: &ConvId, _target: u64) -> Result<(), Failure> {
        Err(not_yet())
    }

    pub(super) fn fold_reactions(
        &self,
        _conv: &ConvId,
        _lo: u64,
        _hi: u64,
        _events: &mut [Event],
    ) -> Result<(), postgres::Error> {
        Ok(())
    }
}
