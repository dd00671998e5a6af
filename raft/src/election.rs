//! Leader election (§5.2, §5.4.1), pre-vote (dissertation §9.6) and becoming leader.

use crate::progress::Progress;
use crate::quorum::VoteResult;
use crate::raft::Raft;
use crate::storage::Storage;
use crate::types::{Message, MessageBody, Payload, Role};

impl<S: Storage> Raft<S> {
    /// Starts an election. With `pre_vote` it first asks whether it could win, without bumping
    /// any term, so a partitioned replica rejoining cannot depose a healthy leader.
    pub(crate) fn campaign(&mut self, pre_vote: bool, transfer: bool) {
        if !self.is_promotable() || self.votes_withheld() {
            return;
        }
        let vote_term = if pre_vote {
            self.role = Role::PreCandidate;
            self.votes = Default::default();
            self.leader_id = None;
            self.votes.record(self.id, true);
            if self.votes.result(self.voters()) == VoteResult::Won {
                return self.campaign(false, transfer);
            }
            self.term + 1
        } else {
            let term = self.term + 1;
            self.reset(term);
            self.election_elapsed_ticks = 0;
            self.role = Role::Candidate;
            self.vote = Some(self.id);
            // Our own vote counts only once it is durable, like anyone else's.
            self.send_after_persist(self.id, MessageBody::VoteResponse { pre_vote: false, granted: true });
            self.term
        };
        let last_log_index = self.log.last_index();
        let last_log_term = self.log.last_term();
        let voters: Vec<_> = self.voters().iter().copied().filter(|&v| v != self.id).collect();
        for voter in voters {
            let body = MessageBody::VoteRequest { pre_vote, last_log_index, last_log_term, transfer };
            if pre_vote {
                self.send_with_term(voter, vote_term, body);
            } else {
                // A real vote request waits until our new term and self-vote are durable: had we
                // won before that and crashed, we could restart in the old term, ask the same
                // voters again (who may grant the same candidate twice) and lead the same term a
                // second time with a different log.
                self.send_after_persist(voter, body);
            }
        }
    }

    pub(crate) fn handle_vote_request(
        &mut self,
        message: &Message,
        pre_vote: bool,
        last_log_index: u64,
        last_log_term: u64,
    ) {
        // One vote per term (§5.2); a pre-vote for a future term promises nothing.
        let can_vote = (self.vote == Some(message.from)
            || (self.vote.is_none() && self.leader_id.is_none())
            || (pre_vote && message.term > self.term))
            && !self.votes_withheld();
        if can_vote && self.log.is_up_to_date(last_log_index, last_log_term) {
            if pre_vote {
                self.send_with_term(
                    message.from,
                    message.term,
                    MessageBody::VoteResponse { pre_vote: true, granted: true },
                );
            } else {
                self.election_elapsed_ticks = 0;
                self.vote = Some(message.from);
                self.send_after_persist(message.from, MessageBody::VoteResponse { pre_vote: false, granted: true });
            }
        } else {
            self.send(message.from, MessageBody::VoteResponse { pre_vote, granted: false });
        }
    }

    pub(crate) fn handle_vote_response(&mut self, from: u64, pre_vote: bool, granted: bool) {
        if pre_vote != (self.role == Role::PreCandidate) {
            return;
        }
        self.votes.record(from, granted);
        match self.votes.result(self.voters()) {
            VoteResult::Won => {
                if pre_vote {
                    self.campaign(false, false);
                } else {
                    self.become_leader();
                }
            }
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, None);
            }
            VoteResult::Pending => {}
        }
    }

    pub(crate) fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate, "only a candidate becomes leader");
        let term = self.term;
        let vote = self.vote;
        self.reset(term);
        self.election_elapsed_ticks = 0;
        self.vote = vote;
        self.role = Role::Leader;
        self.leader_id = Some(self.id);
        let last_index = self.log.last_index();
        let members = self.membership.current().clone();
        for &peer in members.voters.iter().chain(members.learners.iter()) {
            let mut progress = Progress::new(last_index + 1);
            // Count peers as active at the start so check-quorum gives them a full round.
            progress.recent_active = true;
            if peer == self.id {
                progress.matched = self.log.persisted_last_index();
                progress.next = progress.matched + 1;
                progress.become_replicate();
            }
            self.progress.insert(peer, progress);
        }
        // Any membership change in our log may be uncommitted: no new one until it commits.
        self.pending_conf_index = last_index;
        // Figure 8: earlier-term entries commit only once an entry of our term does.
        self.append_as_leader(Payload::Noop);
        self.broadcast_append();
    }
}
