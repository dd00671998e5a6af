//! Proposing single-server membership changes, with the two rules that make them safe: at most
//! one change is uncommitted at a time, and the leader first commits an entry of its own term
//! (otherwise a change from a deposed leader's term could still be overwritten while a new one
//! takes effect, letting two non-overlapping majorities exist).

use crate::error::{Error, Result};
use crate::raft::Raft;
use crate::storage::Storage;
use crate::types::{ConfChange, Payload};

impl<S: Storage> Raft<S> {
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<u64> {
        self.check_can_propose()?;
        if !self.committed_in_current_term() {
            return Err(Error::LeaderNotReady);
        }
        if self.pending_conf_index > self.log.committed() {
            return Err(Error::ConfChangePending { index: self.pending_conf_index });
        }
        self.membership.current().apply(change).map_err(Error::ConfChangeInvalid)?;
        let index = self.append_as_leader(Payload::ConfChange(change));
        self.pending_conf_index = index;
        Ok(index)
    }
}
