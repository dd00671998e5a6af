//! ReadIndex: linearizable reads without a log write. A read is registered at the current commit
//! index and released once a majority answered a heartbeat sent after the registration, proving
//! that no newer leader existed when the read arrived.

use std::collections::{BTreeSet, VecDeque};

use crate::types::{NodeId, ReadState};

#[derive(Debug)]
struct ReadRequest {
    seq: u64,
    context: u64,
    index: u64,
    acks: BTreeSet<NodeId>,
}

#[derive(Debug, Default)]
pub struct ReadOnly {
    queue: VecDeque<ReadRequest>,
    last_seq: u64,
}

impl ReadOnly {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Registers a read at `commit_index`; returns the heartbeat sequence that confirms it.
    pub fn add(&mut self, context: u64, commit_index: u64, self_id: NodeId) -> u64 {
        self.last_seq += 1;
        self.queue.push_back(ReadRequest {
            seq: self.last_seq,
            context,
            index: commit_index,
            acks: [self_id].into_iter().collect(),
        });
        self.last_seq
    }

    /// `from` answered the heartbeat carrying `seq`, which was sent after every read up to `seq`.
    pub fn ack(&mut self, seq: u64, from: NodeId, is_quorum: impl Fn(&BTreeSet<NodeId>) -> bool) -> Vec<ReadState> {
        for request in self.queue.iter_mut().take_while(|r| r.seq <= seq) {
            request.acks.insert(from);
        }
        let mut released = Vec::new();
        // Releasing in order keeps read indexes monotonic; a quorum for a later read also
        // confirms earlier ones since its heartbeat was sent after them.
        let confirmed = self.queue.iter().rposition(|r| r.seq <= seq && is_quorum(&r.acks));
        if let Some(position) = confirmed {
            for request in self.queue.drain(..=position) {
                released.push(ReadState { context: request.context, index: request.index });
            }
        }
        released
    }

    /// Drops every pending read (leadership lost); returns their contexts.
    pub fn clear(&mut self) -> Vec<u64> {
        self.queue.drain(..).map(|r| r.context).collect()
    }
}
