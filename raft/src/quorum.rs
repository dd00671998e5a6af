//! Majority arithmetic over the voter set.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::NodeId;

pub fn majority(voter_count: usize) -> usize {
    voter_count / 2 + 1
}

/// Largest index held by a majority of `voters`, given each voter's matched index.
pub fn committed_index(voters: &BTreeSet<NodeId>, matched: impl Fn(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return 0;
    }
    let mut indexes: Vec<u64> = voters.iter().map(|&id| matched(id)).collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[majority(voters.len()) - 1]
}

pub fn has_quorum(voters: &BTreeSet<NodeId>, members: &BTreeSet<NodeId>) -> bool {
    voters.intersection(members).count() >= majority(voters.len())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// Votes received in one election; only the first answer of each voter counts.
#[derive(Clone, Debug, Default)]
pub struct VoteTally {
    votes: BTreeMap<NodeId, bool>,
}

impl VoteTally {
    pub fn record(&mut self, from: NodeId, granted: bool) {
        self.votes.entry(from).or_insert(granted);
    }

    pub fn result(&self, voters: &BTreeSet<NodeId>) -> VoteResult {
        let needed = majority(voters.len());
        let granted = voters.iter().filter(|id| self.votes.get(id) == Some(&true)).count();
        let rejected = voters.iter().filter(|id| self.votes.get(id) == Some(&false)).count();
        if granted >= needed {
            VoteResult::Won
        } else if voters.len() - rejected < needed {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_index_is_the_majority_minimum() {
        let voters: BTreeSet<NodeId> = [1, 2, 3, 4, 5].into_iter().collect();
        let matched = |id: NodeId| [0, 9, 7, 5, 3, 1][id as usize];
        assert_eq!(committed_index(&voters, matched), 5);
    }

    #[test]
    fn tally_loses_when_majority_rejects() {
        let voters: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
        let mut tally = VoteTally::default();
        tally.record(1, true);
        assert_eq!(tally.result(&voters), VoteResult::Pending);
        tally.record(2, false);
        tally.record(2, true);
        assert_eq!(tally.result(&voters), VoteResult::Pending, "second answer ignored");
        tally.record(3, false);
        assert_eq!(tally.result(&voters), VoteResult::Lost);
    }
}
