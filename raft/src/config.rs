//! Tunables of one replica. Every limit is a named field with its unit last and is enforced.

use crate::error::{Error, Result};
use crate::types::NodeId;

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// A follower campaigns after a random timeout in [min, max) ticks without hearing a leader.
    /// `min` is also the leader-lease window for check-quorum and the vote-ignoring rule.
    pub election_timeout_ticks_min: u32,
    pub election_timeout_ticks_max: u32,
    pub heartbeat_interval_ticks: u32,
    /// Upper bound on entry bytes in one AppendEntries (at least one entry is always sent).
    pub append_entries_bytes_max: u64,
    /// AppendEntries in flight per follower while replicating (pipelining depth).
    pub inflight_appends_max: usize,
    /// Uncommitted entry bytes the leader accepts before refusing proposals (back pressure).
    pub uncommitted_bytes_max: u64,
    pub proposal_bytes_max: u64,
    /// Committed entry bytes handed out in one Ready (at least one entry is always handed out).
    pub committed_entries_bytes_max: u64,
    pub read_index_pending_max: usize,
    /// Ticks a follower may stay in snapshot state before the leader probes it again
    /// (covers a lost snapshot message).
    pub snapshot_timeout_ticks: u32,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Serve linearizable reads from a leader lease without a heartbeat round. Relies on a clock
    /// assumption: while any node counts `election_timeout_ticks_min` ticks, no other node's
    /// count differs by more than `lease_clock_drift_ticks_max`. Requires `check_quorum`.
    pub lease_read: bool,
    pub lease_clock_drift_ticks_max: u32,
    /// Seed of the election-timeout randomness: Raft owns no randomness source.
    pub random_seed: u64,
    /// Index the state machine has applied at start (0 = the storage snapshot's index).
    pub applied_index: u64,
}

impl Config {
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_timeout_ticks_min: 10,
            election_timeout_ticks_max: 20,
            heartbeat_interval_ticks: 2,
            append_entries_bytes_max: 1 << 20,
            inflight_appends_max: 64,
            uncommitted_bytes_max: 64 << 20,
            proposal_bytes_max: 8 << 20,
            committed_entries_bytes_max: 16 << 20,
            read_index_pending_max: 4096,
            snapshot_timeout_ticks: 40,
            pre_vote: true,
            check_quorum: true,
            lease_read: false,
            lease_clock_drift_ticks_max: 3,
            random_seed: id,
            applied_index: 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.id == 0 {
            return Err(Error::InvalidConfig("id must not be 0"));
        }
        if self.heartbeat_interval_ticks == 0 {
            return Err(Error::InvalidConfig("heartbeat_interval_ticks must be > 0"));
        }
        if self.election_timeout_ticks_min <= self.heartbeat_interval_ticks {
            return Err(Error::InvalidConfig("election_timeout_ticks_min must exceed heartbeat_interval_ticks"));
        }
        if self.election_timeout_ticks_max <= self.election_timeout_ticks_min {
            return Err(Error::InvalidConfig("election_timeout_ticks_max must exceed election_timeout_ticks_min"));
        }
        if self.inflight_appends_max == 0 {
            return Err(Error::InvalidConfig("inflight_appends_max must be > 0"));
        }
        if self.append_entries_bytes_max == 0 || self.committed_entries_bytes_max == 0 {
            return Err(Error::InvalidConfig("byte limits must be > 0"));
        }
        if self.proposal_bytes_max > self.uncommitted_bytes_max {
            return Err(Error::InvalidConfig("proposal_bytes_max must not exceed uncommitted_bytes_max"));
        }
        if self.lease_read && !self.check_quorum {
            return Err(Error::InvalidConfig("lease_read requires check_quorum"));
        }
        if self.lease_clock_drift_ticks_max >= self.election_timeout_ticks_min {
            return Err(Error::InvalidConfig("lease_clock_drift_ticks_max must be below election_timeout_ticks_min"));
        }
        if self.read_index_pending_max == 0 || self.snapshot_timeout_ticks == 0 {
            return Err(Error::InvalidConfig("read/snapshot limits must be > 0"));
        }
        Ok(())
    }
}
