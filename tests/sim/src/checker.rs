//! Cluster-wide safety properties, checked after every simulated step against a global model of
//! what has been committed. Each check returns a description of the violation.

use std::collections::{BTreeMap, HashMap};

use raft::{Entry, NodeId, Payload};

use crate::rng::hash_bytes;

pub fn payload_hash(entry: &Entry) -> u64 {
    match &entry.payload {
        Payload::Noop => 1,
        Payload::Data(data) => hash_bytes(2, data),
        Payload::ConfChange(change) => hash_bytes(3, format!("{change:?}").as_bytes()),
    }
}

/// Digest of a state machine after applying `entry` to a state with digest `previous`.
pub fn chain_digest(previous: u64, entry: &Entry) -> u64 {
    let mut bytes = previous.to_le_bytes().to_vec();
    bytes.extend_from_slice(&entry.index.to_le_bytes());
    bytes.extend_from_slice(&entry.term.to_le_bytes());
    bytes.extend_from_slice(&payload_hash(entry).to_le_bytes());
    hash_bytes(4, &bytes)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CommittedEntry {
    term: u64,
    payload_hash: u64,
    /// Lowest term of a replica seen holding it as committed: it was committed at or before.
    observed_term: u64,
}

#[derive(Default)]
pub struct Checker {
    leaders: BTreeMap<u64, NodeId>,
    committed: BTreeMap<u64, CommittedEntry>,
    /// (index, term) -> (payload hash, term of index-1): log matching by induction.
    identities: HashMap<(u64, u64), (u64, Option<u64>)>,
    /// Digest of the state after applying each index, as first seen.
    digests: BTreeMap<u64, u64>,
    /// Durable vote per (node, term).
    votes: HashMap<(NodeId, u64), NodeId>,
}

pub type Violation = String;

impl Checker {
    /// Election safety: at most one leader per term.
    pub fn leader(&mut self, term: u64, id: NodeId) -> Result<(), Violation> {
        let leader = *self.leaders.entry(term).or_insert(id);
        if leader != id {
            return Err(format!("two leaders in term {term}: {leader} and {id}"));
        }
        Ok(())
    }

    /// Log matching: the same (index, term) always names the same entry with the same predecessor.
    pub fn appended(&mut self, entry: &Entry, prev_term: Option<u64>) -> Result<(), Violation> {
        let key = (entry.index, entry.term);
        let value = (payload_hash(entry), prev_term);
        match self.identities.get(&key) {
            None => {
                self.identities.insert(key, value);
            }
            Some(&(hash, known_prev)) => {
                if hash != value.0 {
                    return Err(format!("entry {key:?} exists with two payloads"));
                }
                if let (Some(a), Some(b)) = (known_prev, prev_term) {
                    if a != b {
                        return Err(format!("entry {key:?} follows terms {a} and {b}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// A replica holds `entry` as committed while in `node_term`.
    pub fn committed(&mut self, entry: &Entry, node_term: u64) -> Result<(), Violation> {
        let record = CommittedEntry { term: entry.term, payload_hash: payload_hash(entry), observed_term: node_term };
        match self.committed.get_mut(&entry.index) {
            None => {
                self.committed.insert(entry.index, record);
            }
            Some(known) => {
                if known.term != record.term || known.payload_hash != record.payload_hash {
                    return Err(format!(
                        "committed entry {} changed: term {} -> {}",
                        entry.index, known.term, record.term
                    ));
                }
                known.observed_term = known.observed_term.min(node_term);
            }
        }
        Ok(())
    }

    /// Leader completeness: a leader of `term` holds every entry committed in an earlier term.
    pub fn leader_complete(
        &self,
        id: NodeId,
        term: u64,
        first_index: u64,
        term_of: impl Fn(u64) -> Option<u64>,
    ) -> Result<(), Violation> {
        for (&index, record) in self.committed.range(first_index..) {
            if record.observed_term < term && term_of(index) != Some(record.term) {
                return Err(format!("leader {id} of term {term} lacks committed entry {index} (term {})", record.term));
            }
        }
        Ok(())
    }

    /// State-machine safety: every replica reaches the same state after the same index.
    pub fn applied(&mut self, index: u64, digest: u64) -> Result<(), Violation> {
        let known = *self.digests.entry(index).or_insert(digest);
        if known != digest {
            return Err(format!("replicas diverge after applying index {index}"));
        }
        Ok(())
    }

    pub fn durable_vote(&mut self, id: NodeId, term: u64, vote: NodeId) -> Result<(), Violation> {
        let known = *self.votes.entry((id, term)).or_insert(vote);
        if known != vote {
            return Err(format!("node {id} voted for {known} and {vote} in term {term}"));
        }
        Ok(())
    }

    pub fn committed_term(&self, index: u64) -> Option<u64> {
        self.committed.get(&index).map(|record| record.term)
    }

    pub fn committed_len(&self) -> u64 {
        self.committed.keys().next_back().copied().unwrap_or(0)
    }
}
