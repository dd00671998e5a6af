//! One test per rule of the Raft paper (Ongaro & Ousterhout, "In Search of an Understandable
//! Consensus Algorithm", extended version), named after the rule.

mod common;

use common::*;
use raft::{MessageBody, Payload, RawNode, RejectHint, Role, Storage};

fn granted(messages: &[raft::Message], to: u64) -> Option<bool> {
    messages.iter().find_map(|m| match m.body {
        MessageBody::VoteResponse { pre_vote: false, granted } if m.to == to => Some(granted),
        _ => None,
    })
}

// §5.1: "If one server's current term is smaller than the other's, then it updates its current
// term to the larger value. If a candidate or leader discovers that its term is out of date, it
// immediately reverts to follower state."
#[test]
fn higher_term_converts_leader_and_candidate_to_follower() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let term = cluster.node(1).status().term;
    cluster.node(1).step(message(2, 1, term + 5, MessageBody::Heartbeat { commit: 0, read_seq: 0, lease_tick: 0 }));
    let status = cluster.node(1).status();
    assert_eq!(status.role, Role::Follower);
    assert_eq!(status.term, term + 5);
    assert_eq!(status.leader, Some(2));

    let mut candidate = RawNode::new(config(1), storage_with_log(&[1, 2, 3], &[], 0)).expect("node");
    candidate.campaign();
    assert_eq!(candidate.status().role, Role::Candidate);
    candidate.step(vote_request(3, 1, 9, 0, 0));
    assert_eq!(candidate.status().role, Role::Follower);
    assert_eq!(candidate.status().term, 9);
}

// §5.1: "If a server receives a request with a stale term number, it rejects the request."
#[test]
fn stale_term_request_is_rejected() {
    let mut node = RawNode::new(config(1), storage_with_log(&[1, 2, 3], &[1, 1], 5)).expect("node");
    node.step(message(
        2,
        1,
        3,
        MessageBody::Append { prev_log_index: 2, prev_log_term: 1, entries: vec![entry(3, 3)], commit: 3 },
    ));
    let (messages, _, _) = drain(&mut node);
    assert_eq!(node.status().last_index, 2, "stale append must not change the log");
    assert_eq!(node.status().commit, 0);
    assert!(messages.iter().all(|m| m.term == 5), "replies carry our newer term");
}

// §5.2: "Each server will vote for at most one candidate in a given term, on a first-come-
// first-served basis."
#[test]
fn follower_grants_at_most_one_vote_per_term() {
    let mut node = RawNode::new(config(1), storage_with_log(&[1, 2, 3], &[], 0)).expect("node");
    node.step(vote_request(2, 1, 1, 0, 0));
    let (messages, _, _) = drain(&mut node);
    assert_eq!(granted(&messages, 2), Some(true));
    node.step(vote_request(3, 1, 1, 0, 0));
    let (messages, _, _) = drain(&mut node);
    assert_eq!(granted(&messages, 3), Some(false), "second candidate in the same term");
    node.step(vote_request(2, 1, 1, 0, 0));
    let (messages, _, _) = drain(&mut node);
    assert_eq!(granted(&messages, 2), Some(true), "a repeated request from the same candidate");
    assert_eq!(node.status().vote, Some(2));
}

// Figure 2, persistent state: "updated on stable storage before responding to RPCs".
#[test]
fn vote_grant_is_sent_only_after_vote_is_persisted() {
    let mut node = RawNode::new(config(1), storage_with_log(&[1, 2, 3], &[], 0)).expect("node");
    node.step(vote_request(2, 1, 1, 0, 0));
    let ready = node.ready();
    assert_eq!(ready.hard_state.map(|h| h.vote), Some(Some(2)));
    assert_eq!(granted(&ready.messages, 2), None, "grant left before the vote was durable");
    node.storage_mut().set_hard_state(ready.hard_state.expect("hard state")).expect("persist");
    node.on_persisted(ready.number);
    let ready = node.ready();
    assert_eq!(granted(&ready.messages, 2), Some(true));
}

// §5.4.1: "the voter denies its vote if its own log is more up-to-date than that of the
// candidate" (last term first, then length).
#[test]
fn voter_denies_vote_to_candidate_with_less_up_to_date_log() {
    let cases = [
        // (candidate last index, last term, granted)
        (3, 1, false), // older last term, longer log
        (1, 2, false), // same last term, shorter log
        (2, 2, true),  // same last term and length
        (1, 3, true),  // newer last term, shorter log
    ];
    for (last_index, last_term, expected) in cases {
        let mut node = RawNode::new(config(1), storage_with_log(&[1, 2, 3], &[1, 2], 2)).expect("node");
        node.step(vote_request(2, 1, 3, last_index, last_term));
        let (messages, _, _) = drain(&mut node);
        assert_eq!(granted(&messages, 2), Some(expected), "candidate log ({last_index}, {last_term})");
    }
}

// §5.2: "A candidate wins an election if it receives votes from a majority of the servers in the
// full cluster for the same term." §8: a new leader appends a no-op entry.
#[test]
fn candidate_with_majority_becomes_leader_and_appends_noop() {
    let mut cluster = Cluster::new(5, |_| {});
    cluster.isolate(4);
    cluster.cut.insert((1, 5));
    cluster.elect(1);
    let node = cluster.node(1);
    let status = node.status();
    assert_eq!(status.last_index, 1);
    assert_eq!(node.entry(1).map(|e| e.payload), Some(Payload::Noop));
    assert_eq!(status.commit, 1, "the no-op commits with 3 of 5");
}

// §5.2: a candidate that hears from a majority rejecting it does not become leader.
#[test]
fn candidate_without_majority_does_not_become_leader() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.isolate(1);
    cluster.node(1).campaign();
    cluster.stabilize();
    assert_eq!(cluster.node(1).status().role, Role::Candidate);
    assert!(cluster.leaders().is_empty());
}

// §5.2: "Raft uses randomized election timeouts ... chosen randomly from a fixed interval".
#[test]
fn election_timeout_is_randomized_within_bounds() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..40 {
        let mut config = config(1);
        config.random_seed = seed;
        let mut node = RawNode::new(config, storage_with_log(&[1, 2, 3], &[], 0)).expect("node");
        let mut ticks = 0;
        while node.status().role == Role::Follower {
            node.tick();
            ticks += 1;
            assert!(ticks < 20, "no campaign within election_timeout_ticks_max");
        }
        assert!(ticks >= 10, "campaigned before election_timeout_ticks_min");
        seen.insert(ticks);
    }
    assert!(seen.len() > 3, "timeouts are not spread: {seen:?}");
}

// §5.3 log matching: "If the follower does not find an entry in its log with the same index and
// term, then it refuses the new entries." With the conflict hint of §5.3's optimization.
#[test]
fn follower_rejects_append_when_previous_entry_does_not_match() {
    let mut node = RawNode::new(config(2), storage_with_log(&[1, 2, 3], &[1, 1, 2, 2, 2], 3)).expect("node");
    node.step(message(
        1,
        2,
        3,
        MessageBody::Append { prev_log_index: 5, prev_log_term: 3, entries: vec![entry(6, 3)], commit: 0 },
    ));
    let (messages, _, _) = drain(&mut node);
    let reject = messages.iter().find_map(|m| match m.body {
        MessageBody::AppendResponse { index, reject } => Some((index, reject)),
        _ => None,
    });
    assert_eq!(reject, Some((5, Some(RejectHint { index: 5, term: 2 }))), "hint names our last index with a term <= 3");
    assert_eq!(node.status().last_index, 5, "rejected entries must not be appended");
}

// §5.3: "If an existing entry conflicts with a new one (same index but different terms), delete
// the existing entry and all that follow it" -- and only then: entries that match are kept,
// so a stale, shorter AppendEntries does not truncate.
#[test]
fn follower_truncates_only_from_first_conflicting_index() {
    let mut node = RawNode::new(config(2), storage_with_log(&[1, 2, 3], &[1, 1, 1, 1], 2)).expect("node");
    node.step(message(
        1,
        2,
        2,
        MessageBody::Append { prev_log_index: 1, prev_log_term: 1, entries: vec![entry(2, 1), entry(3, 2)], commit: 0 },
    ));
    drain(&mut node);
    let terms: Vec<_> = (1..=node.status().last_index).map(|i| node.term(i)).collect();
    assert_eq!(terms, vec![Some(1), Some(1), Some(2)], "truncated at 3, kept 1..=2");
    // A duplicate of an older, shorter append changes nothing.
    node.step(message(
        1,
        2,
        2,
        MessageBody::Append { prev_log_index: 1, prev_log_term: 1, entries: vec![entry(2, 1)], commit: 0 },
    ));
    drain(&mut node);
    assert_eq!(node.status().last_index, 3);
    assert_eq!(node.storage().term(3), Ok(2), "storage holds the same log");
}

// §5.3 / §5.4.2: "a leader knows that an entry from its current term is committed once that
// entry is stored on a majority"; followers learn it from leaderCommit.
#[test]
fn leader_commits_current_term_entry_on_majority_and_followers_learn_it() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.isolate(3);
    let index = cluster.propose(1, b"x");
    assert_eq!(cluster.node(1).status().commit, index);
    assert_eq!(cluster.node(2).status().commit, index);
    assert!(cluster.node(3).status().commit < index);
    cluster.heal();
    cluster.tick_all(1);
    assert_eq!(cluster.node(3).status().commit, index);
    let applied: Vec<_> = cluster.applied[&3].iter().map(|e| e.index).collect();
    assert_eq!(applied.last(), Some(&index));
}

// Figure 8 / §5.4.2: "Raft never commits log entries from previous terms by counting replicas."
#[test]
fn figure8_leader_does_not_commit_previous_term_entry_by_counting_replicas() {
    // Node 1 leads term 4 with an entry of term 2 at index 2 that node 2 also holds.
    let mut cluster = Cluster::with_storages(
        vec![
            (1, storage_with_log(&[1, 2, 3], &[1, 2], 3)),
            (2, storage_with_log(&[1, 2, 3], &[1, 2], 3)),
            (3, storage_with_log(&[1, 2, 3], &[1, 3], 3)),
        ],
        |_| {},
    );
    // Hold back node 1's appends so the no-op of term 4 is not replicated.
    cluster.filter = Box::new(|m| !matches!(m.body, MessageBody::Append { .. }) || m.from != 1);
    cluster.elect(1);
    assert_eq!(cluster.node(1).status().term, 4);
    // Node 2 acknowledges index 2 (term 2) as if it had just received it again.
    cluster.node(1).step(message(2, 1, 4, MessageBody::AppendResponse { index: 2, reject: None }));
    cluster.stabilize();
    assert_eq!(
        cluster.node(1).status().commit,
        0,
        "index 2 (term 2) is on a majority but must not be committed by counting"
    );
    cluster.filter = Box::new(|_| true);
    cluster.tick_all(1);
    let status = cluster.node(1).status();
    assert_eq!(status.commit, 3, "committing the term-4 no-op commits index 2 with it");
    assert_eq!(cluster.log_terms(3), vec![1, 2, 4], "node 3's term-3 entry was overwritten");
}

// Figure 7: a leader brings followers with missing and extraneous entries in line with its log.
#[test]
fn figure7_leader_makes_every_divergent_follower_log_match() {
    let leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [&[u64]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],
        &[1, 1, 1, 4],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        &[1, 1, 1, 4, 4, 4, 4],
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ];
    for (case, follower) in followers.iter().enumerate() {
        let mut cluster = Cluster::with_storages(
            vec![
                (1, storage_with_log(&[1, 2, 3], &leader_log, 7)),
                (2, storage_with_log(&[1, 2, 3], follower, 7)),
                (3, storage_with_log(&[1, 2, 3], &leader_log, 7)),
            ],
            |_| {},
        );
        cluster.elect(1);
        cluster.tick_all(2);
        let mut expected = leader_log.to_vec();
        expected.push(8);
        assert_eq!(cluster.log_terms(2), expected, "figure 7 case ({})", case);
        assert_eq!(cluster.node(2).status().commit, 11);
    }
}

// §5.4.1 leader completeness: a node lacking a committed entry cannot be elected.
#[test]
fn node_missing_committed_entries_cannot_become_leader() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.isolate(3);
    let index = cluster.propose(1, b"committed");
    assert_eq!(cluster.node(1).status().commit, index);
    cluster.heal();
    cluster.isolate(1);
    cluster.node(3).campaign();
    cluster.stabilize();
    assert_ne!(cluster.node(3).status().role, Role::Leader, "lagging node won");
    cluster.node(2).campaign();
    cluster.stabilize();
    assert_eq!(cluster.node(2).status().role, Role::Leader);
    assert!(cluster.node(2).term(index).is_some(), "new leader holds the committed entry");
}

// §5.3: the leader's own append counts toward commitment only once durable (persistence
// contract; the paper's leader writes its log before acknowledging to itself).
#[test]
fn leader_counts_itself_only_after_local_persistence() {
    let mut node = RawNode::new(config(1), storage_with_log(&[1], &[], 0)).expect("node");
    node.campaign();
    drain(&mut node);
    assert_eq!(node.status().role, Role::Leader);
    let index = node.propose(b"x".to_vec()).expect("propose");
    let ready = node.ready();
    assert_eq!(ready.entries.len(), 1);
    assert!(node.status().commit < index, "committed before its own write was durable");
    node.storage_mut().append(&ready.entries).expect("append");
    node.on_persisted(ready.number);
    drain(&mut node);
    assert_eq!(node.status().commit, index);
}

// Figure 2 persistent state: a follower acknowledges entries only once they are durable.
#[test]
fn append_ack_is_sent_only_after_entries_are_persisted() {
    let mut node = RawNode::new(config(2), storage_with_log(&[1, 2, 3], &[], 1)).expect("node");
    node.step(message(
        1,
        2,
        1,
        MessageBody::Append { prev_log_index: 0, prev_log_term: 0, entries: vec![entry(1, 1)], commit: 0 },
    ));
    let ready = node.ready();
    assert_eq!(ready.entries.len(), 1);
    assert!(ready.messages.is_empty(), "ack left before the entry was durable");
    node.storage_mut().append(&ready.entries).expect("append");
    node.on_persisted(ready.number);
    let ready = node.ready();
    assert!(ready.messages.iter().any(|m| matches!(m.body, MessageBody::AppendResponse { index: 1, reject: None })));
}

// Figure 2: current term, vote and log survive a restart.
#[test]
fn restart_recovers_term_vote_and_log() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.propose(1, b"a");
    cluster.propose(1, b"b");
    let before = cluster.node(2).status();
    let storage = cluster.nodes.remove(&2).expect("node 2").into_storage();
    let restarted = RawNode::new(config(2), storage).expect("restart");
    let after = restarted.status();
    assert_eq!((after.term, after.vote, after.last_index), (before.term, before.vote, before.last_index));
    assert_eq!(after.commit, before.commit);
    assert_eq!(after.role, Role::Follower);
}

// Figure 2, followers: "If election timeout elapses without receiving AppendEntries RPC from
// current leader or granting vote to candidate: convert to candidate." Merely seeing a higher
// term (here a vote request we reject) does not restart the timer.
#[test]
fn rejected_higher_term_candidate_does_not_restart_the_election_timer() {
    let mut config = config(1);
    config.election_timeout_ticks_min = 10;
    config.election_timeout_ticks_max = 11;
    let mut node = RawNode::new(config, storage_with_log(&[1, 2, 3], &[1, 1, 1], 1)).expect("node");
    for _ in 0..9 {
        node.tick();
    }
    node.step(vote_request(2, 1, 5, 1, 1));
    let (messages, _, _) = drain(&mut node);
    assert_eq!(granted(&messages, 2), Some(false), "stale candidate log must be rejected");
    assert_eq!(node.status().term, 5);
    node.tick();
    assert_eq!(node.status().role, Role::Candidate, "timer was restarted by a higher term");
}
