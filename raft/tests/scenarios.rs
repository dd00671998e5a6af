//! Scenario tests for the known Raft pitfalls: pre-vote, check-quorum, ReadIndex, snapshots
//! racing with appends, leadership transfer, membership changes, flow control and back pressure.

mod common;

use common::*;
use raft::{
    ConfChange, ConfChangeKind, ConfState, Error, MemStorage, MessageBody, RawNode, Role, Snapshot, SnapshotMeta,
    Storage,
};

fn with_pre_vote_and_check_quorum(config: &mut raft::Config) {
    config.pre_vote = true;
    config.check_quorum = true;
}

#[test]
fn pre_vote_keeps_a_rejoining_partitioned_node_from_disrupting_the_leader() {
    let mut cluster = Cluster::new(3, |c| c.pre_vote = true);
    cluster.elect(1);
    let term = cluster.node(1).status().term;
    cluster.isolate(3);
    cluster.tick_all(100);
    assert_eq!(cluster.node(3).status().term, term, "pre-vote must not bump the term");
    assert_eq!(cluster.node(3).status().role, Role::PreCandidate);
    cluster.heal();
    cluster.tick_all(3);
    assert_eq!(cluster.leaders(), vec![1]);
    assert_eq!(cluster.node(1).status().term, term, "the leader was not deposed");
}

#[test]
fn without_pre_vote_a_rejoining_node_forces_a_new_term() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let term = cluster.node(1).status().term;
    cluster.isolate(3);
    cluster.tick_all(50);
    assert!(cluster.node(3).status().term > term, "the control case must bump terms");
}

#[test]
fn check_quorum_leader_steps_down_when_it_loses_its_majority() {
    let mut cluster = Cluster::new(3, with_pre_vote_and_check_quorum);
    cluster.elect(1);
    cluster.isolate(1);
    cluster.tick_all(25);
    assert_ne!(cluster.node(1).status().role, Role::Leader, "isolated leader kept leading");
}

#[test]
fn check_quorum_follower_ignores_vote_requests_while_leader_is_alive() {
    let mut cluster = Cluster::new(3, with_pre_vote_and_check_quorum);
    cluster.elect(1);
    let term = cluster.node(1).status().term;
    let last = cluster.node(3).status().last_index;
    // Node 3 asks node 2 for a vote in a higher term while node 2 hears from leader 1.
    cluster.node(2).step(vote_request(3, 2, term + 1, last, term));
    let (messages, _, _) = drain(cluster.node(2));
    assert!(messages.is_empty(), "vote request inside the lease must be ignored");
    assert_eq!(cluster.node(2).status().term, term);
}

#[test]
fn leader_that_loses_its_majority_cannot_commit_and_its_entries_are_replaced() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.isolate(1);
    let lost = cluster.node(1).propose(b"lost".to_vec()).expect("propose");
    cluster.stabilize();
    assert!(cluster.node(1).status().commit < lost, "minority leader committed");
    cluster.elect(2);
    let new_term = cluster.node(2).status().term;
    let kept = cluster.propose(2, b"kept");
    cluster.heal();
    cluster.tick_all(2);
    assert_eq!(cluster.node(1).status().role, Role::Follower);
    let entry = cluster.node(1).entry(lost).expect("entry");
    assert_eq!(entry.term, new_term, "the minority leader's entry was overwritten");
    assert_eq!(cluster.node(1).status().commit, kept);
    assert!(cluster.applied[&1].iter().all(|e| e.payload != raft::Payload::data(b"lost".to_vec())));
}

#[test]
fn read_index_is_released_only_after_a_heartbeat_quorum() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.propose(1, b"a");
    let commit = cluster.node(1).status().commit;
    cluster.isolate(1);
    cluster.node(1).read_index(7).expect("read");
    cluster.stabilize();
    assert!(cluster.reads[&1].is_empty(), "isolated leader served a read");
    cluster.heal();
    cluster.node(1).read_index(8).expect("read");
    cluster.stabilize();
    let reads: Vec<_> = cluster.reads[&1].iter().map(|r| (r.context, r.index)).collect();
    assert_eq!(reads, vec![(7, commit), (8, commit)]);
    assert_eq!(cluster.node(2).read_index(9), Err(Error::NotLeader { leader: Some(1) }));
}

#[test]
fn read_index_waits_until_the_leader_commits_in_its_term() {
    let mut cluster = Cluster::new(3, |_| {});
    // Drop appends so the new leader's no-op cannot commit.
    cluster.filter = Box::new(|m| !matches!(m.body, MessageBody::Append { .. }));
    cluster.elect(1);
    cluster.node(1).read_index(1).expect("read");
    cluster.tick_all(2);
    assert!(cluster.reads[&1].is_empty(), "read served before commit in current term");
    cluster.filter = Box::new(|_| true);
    cluster.tick_all(2);
    let commit = cluster.node(1).status().commit;
    let reads = &cluster.reads[&1];
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].index, commit);
}

fn compact_to_applied(cluster: &mut Cluster, id: u64) -> u64 {
    let applied = cluster.node(id).status().applied;
    cluster.node(id).compact(applied, format!("state@{applied}").into_bytes().into()).expect("compact");
    applied
}

#[test]
fn follower_behind_the_retained_log_catches_up_with_a_snapshot() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.isolate(3);
    for i in 0..10u8 {
        cluster.propose(1, &[i]);
    }
    let snapshot_index = compact_to_applied(&mut cluster, 1);
    assert_eq!(cluster.node(1).status().first_index, snapshot_index + 1);
    cluster.heal();
    cluster.tick_all(3);
    let status = cluster.node(3).status();
    assert_eq!(status.commit, cluster.node(1).status().commit);
    let snapshot = cluster.node(3).storage().snapshot().expect("snapshot");
    assert_eq!(snapshot.meta.index, snapshot_index);
    assert_eq!(*snapshot.data, format!("state@{snapshot_index}").into_bytes());
    let index = cluster.propose(1, b"after");
    assert_eq!(cluster.node(3).status().commit, index, "replication resumes after snapshot");
}

fn snapshot_message(index: u64, term: u64, leader_term: u64) -> raft::Message {
    message(
        1,
        2,
        leader_term,
        MessageBody::Snapshot {
            snapshot: Snapshot {
                meta: SnapshotMeta { index, term, conf_state: ConfState::with_voters([1, 2, 3]) },
                data: b"snap".to_vec().into(),
            },
        },
    )
}

fn follower_with_committed_log(terms: &[u64], commit: u64) -> RawNode<MemStorage> {
    let mut storage = storage_with_log(&[1, 2, 3], terms, 2);
    storage.set_hard_state(raft::HardState { term: 2, vote: None, commit }).expect("hard state");
    RawNode::new(config(2), storage).expect("node")
}

#[test]
fn snapshot_older_than_commit_is_ignored() {
    let mut node = follower_with_committed_log(&[1, 1, 2, 2, 2], 4);
    node.step(snapshot_message(3, 2, 2));
    let ready = node.ready();
    assert!(ready.snapshot.is_none(), "stale snapshot installed");
    assert_eq!(node.status().last_index, 5, "log kept");
}

#[test]
fn snapshot_matching_the_log_keeps_the_entries_after_it() {
    let mut node = follower_with_committed_log(&[1, 1, 2, 2, 2], 1);
    node.step(snapshot_message(3, 2, 2));
    let (_, _, _) = drain(&mut node);
    let status = node.status();
    assert_eq!(status.commit, 3);
    assert_eq!(status.last_index, 5, "entries after a matching snapshot are kept");
    assert_eq!(node.storage().snapshot().expect("snapshot").meta.index, 0, "nothing installed");
}

#[test]
fn snapshot_not_matching_the_log_replaces_it() {
    let mut node = follower_with_committed_log(&[1, 1, 1, 1, 1], 1);
    node.step(snapshot_message(3, 2, 2));
    let (messages, _, _) = drain(&mut node);
    let status = node.status();
    assert_eq!((status.commit, status.first_index, status.last_index), (3, 4, 3));
    assert!(messages.iter().any(|m| matches!(m.body, MessageBody::AppendResponse { index: 3, reject: None })));
}

#[test]
fn append_delayed_behind_a_snapshot_does_not_undo_it() {
    let mut node = follower_with_committed_log(&[1], 1);
    node.step(snapshot_message(6, 2, 2));
    drain(&mut node);
    // An older AppendEntries, delayed in the network, arrives after the snapshot.
    node.step(message(
        1,
        2,
        2,
        MessageBody::Append { prev_log_index: 1, prev_log_term: 1, entries: vec![entry(2, 2), entry(3, 2)], commit: 3 },
    ));
    let (messages, _, _) = drain(&mut node);
    let status = node.status();
    assert_eq!((status.commit, status.last_index), (6, 6), "snapshot state kept");
    assert!(messages.iter().any(|m| matches!(m.body, MessageBody::AppendResponse { index: 6, reject: None })));
}

#[test]
fn leadership_transfer_hands_over_to_an_up_to_date_follower() {
    let mut cluster = Cluster::new(3, with_pre_vote_and_check_quorum);
    cluster.elect(1);
    cluster.propose(1, b"a");
    cluster.node(1).transfer_leader(3).expect("transfer");
    cluster.stabilize();
    assert_eq!(cluster.leaders(), vec![3], "transfer bypasses the leader lease");
}

#[test]
fn proposals_are_refused_while_a_transfer_is_in_progress() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.isolate(3);
    cluster.propose(1, b"a");
    cluster.node(1).transfer_leader(3).expect("transfer");
    assert_eq!(cluster.node(1).propose(b"b".to_vec()), Err(Error::TransferInProgress));
    // The transfer is abandoned after an election timeout and proposals resume.
    for _ in 0..10 {
        cluster.node(1).tick();
    }
    assert!(cluster.node(1).propose(b"c".to_vec()).is_ok());
}

fn add(kind: ConfChangeKind, node: u64) -> ConfChange {
    ConfChange { kind, node }
}

#[test]
fn conf_change_needs_a_commit_in_the_leader_term_and_one_at_a_time() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.filter = Box::new(|m| !matches!(m.body, MessageBody::Append { .. }));
    cluster.elect(1);
    assert_eq!(cluster.node(1).propose_conf_change(add(ConfChangeKind::AddLearner, 4)), Err(Error::LeaderNotReady));
    cluster.filter = Box::new(|_| true);
    cluster.tick_all(1);
    cluster.isolate(2);
    cluster.isolate(3);
    cluster.node(1).propose_conf_change(add(ConfChangeKind::AddLearner, 4)).expect("first change");
    assert!(matches!(
        cluster.node(1).propose_conf_change(add(ConfChangeKind::AddLearner, 5)),
        Err(Error::ConfChangePending { .. })
    ));
    assert!(matches!(
        cluster.node(1).propose_conf_change(add(ConfChangeKind::Remove, 9)),
        Err(Error::ConfChangePending { .. }) | Err(Error::ConfChangeInvalid(_))
    ));
}

#[test]
fn learner_catches_up_then_is_promoted_to_voter() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.propose(1, b"a");
    // Node 4 starts empty, knowing only the current members.
    let storage = MemStorage::new_with_conf(ConfState::with_voters([1, 2, 3]));
    cluster.nodes.insert(4, RawNode::new(config(4), storage).expect("node 4"));
    cluster.node(1).propose_conf_change(add(ConfChangeKind::AddLearner, 4)).expect("add learner");
    cluster.tick_all(3);
    let leader_commit = cluster.node(1).status().commit;
    assert_eq!(cluster.node(4).status().commit, leader_commit, "learner caught up");
    assert!(cluster.node(4).status().conf_state.learners.contains(&4));
    cluster.node(1).propose_conf_change(add(ConfChangeKind::AddVoter, 4)).expect("promote");
    cluster.tick_all(2);
    let voters = cluster.node(1).status().conf_state.voters;
    assert_eq!(voters.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    // With 4 voters, a majority is 3: two nodes down blocks commits.
    cluster.isolate(3);
    cluster.isolate(4);
    let index = cluster.node(1).propose(b"b".to_vec()).expect("propose");
    cluster.stabilize();
    assert!(cluster.node(1).status().commit < index, "committed with 2 of 4");
}

#[test]
fn removed_leader_steps_down_once_its_removal_commits() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.node(1).propose_conf_change(add(ConfChangeKind::Remove, 1)).expect("remove self");
    cluster.stabilize();
    assert_eq!(cluster.node(1).status().role, Role::Follower);
    cluster.tick_all(25);
    let leaders = cluster.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], 1, "a removed node must not lead");
    let index = cluster.propose(leaders[0], b"after");
    assert_eq!(cluster.node(2).status().commit, index);
}

#[test]
fn uncommitted_conf_change_is_rolled_back_when_truncated() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.isolate(1);
    cluster.node(1).propose_conf_change(add(ConfChangeKind::AddLearner, 7)).expect("change");
    cluster.stabilize();
    assert!(cluster.node(1).status().conf_state.learners.contains(&7), "in force on append");
    cluster.elect(2);
    cluster.propose(2, b"x");
    cluster.heal();
    cluster.tick_all(2);
    assert!(cluster.node(1).status().conf_state.learners.is_empty(), "truncated change still in force");
}

#[test]
fn replicate_state_pipelines_at_most_inflight_appends_max() {
    let mut cluster = Cluster::new(2, |c| {
        c.inflight_appends_max = 3;
        c.append_entries_bytes_max = 1;
    });
    cluster.elect(1);
    for i in 0..10u8 {
        cluster.node(1).propose(vec![i]).expect("propose");
    }
    let (messages, _, _) = drain(cluster.node(1));
    let appends = messages
        .iter()
        .filter(|m| matches!(&m.body, MessageBody::Append { entries, .. } if !entries.is_empty()))
        .count();
    assert_eq!(appends, 3, "one entry per append (bytes limit), three in flight");
    for message in messages {
        cluster.node(2).step(message);
    }
    cluster.stabilize();
    assert_eq!(cluster.node(2).status().commit, cluster.node(1).status().last_index);
}

#[test]
fn proposals_beyond_the_limits_are_refused() {
    let mut cluster = Cluster::new(3, |c| {
        c.proposal_bytes_max = 100;
        c.uncommitted_bytes_max = 300;
    });
    cluster.elect(1);
    assert!(matches!(cluster.node(1).propose(vec![0; 101]), Err(Error::ProposalTooLarge { .. })));
    cluster.isolate(1);
    let mut accepted = 0;
    while cluster.node(1).propose(vec![0; 100]).is_ok() {
        accepted += 1;
        assert!(accepted < 10, "uncommitted_bytes_max not enforced");
    }
    assert_eq!(accepted, 2, "two 124-byte entries fit in 300 bytes");
    cluster.heal();
    cluster.tick_all(2);
    assert!(cluster.node(1).propose(vec![0; 100]).is_ok(), "room again after commit");
}

#[test]
fn follower_proposal_is_refused_with_leader_hint() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(2);
    assert_eq!(cluster.node(1).propose(b"x".to_vec()), Err(Error::NotLeader { leader: Some(2) }));
}

#[test]
fn fast_backoff_skips_a_whole_conflicting_term() {
    // Follower 2 holds many entries of an uncommitted term 2 that the leader lacks.
    let mut cluster = Cluster::with_storages(
        vec![
            (1, storage_with_log(&[1, 2, 3], &[1, 3, 3], 3)),
            (2, storage_with_log(&[1, 2, 3], &[1, 2, 2, 2, 2, 2, 2, 2, 2, 2], 3)),
            (3, storage_with_log(&[1, 2, 3], &[1, 3, 3], 3)),
        ],
        |_| {},
    );
    cluster.isolate(2);
    cluster.elect(1);
    cluster.heal();
    let mut rejections = 0;
    cluster.filter = Box::new(|_| true);
    cluster.node(1).propose(b"x".to_vec()).expect("propose");
    // Count rejections from node 2 while it converges.
    for _ in 0..20 {
        let (messages, _, _) = drain(cluster.node(1));
        let mut replies = Vec::new();
        for m in messages.into_iter().filter(|m| m.to == 2) {
            cluster.node(2).step(m);
            let (out, _, _) = drain(cluster.node(2));
            replies.extend(out);
        }
        rejections +=
            replies.iter().filter(|m| matches!(m.body, MessageBody::AppendResponse { reject: Some(_), .. })).count();
        for reply in replies {
            cluster.node(1).step(reply);
        }
        cluster.node(1).tick();
    }
    cluster.stabilize();
    assert_eq!(cluster.log_terms(2), cluster.log_terms(1));
    assert!(rejections <= 2, "{rejections} rejections: back-off went entry by entry");
}

fn with_lease_reads(config: &mut raft::Config) {
    config.pre_vote = true;
    config.check_quorum = true;
    config.lease_read = true;
    config.lease_clock_drift_ticks_max = 3;
}

/// Leader read without any message: returns the ReadStates released by `read_index` alone.
fn read_without_network(cluster: &mut Cluster, leader: u64, context: u64) -> Vec<raft::ReadState> {
    cluster.node(leader).read_index(context).expect("read accepted");
    let (_, _, reads) = drain(cluster.node(leader));
    reads
}

#[test]
fn lease_read_is_served_without_a_heartbeat_round() {
    let mut cluster = Cluster::new(3, with_lease_reads);
    cluster.tick_all(10); // the post-start quiet period before anyone grants a vote
    cluster.elect(1);
    cluster.propose(1, b"a");
    cluster.tick_all(1); // one heartbeat round starts the lease
    let commit = cluster.node(1).status().commit;
    let reads = read_without_network(&mut cluster, 1, 5);
    assert_eq!(reads, vec![raft::ReadState { context: 5, index: commit }]);
}

#[test]
fn lease_read_falls_back_to_read_index_once_the_lease_expires() {
    let mut cluster = Cluster::new(3, with_lease_reads);
    cluster.tick_all(10);
    cluster.elect(1);
    cluster.tick_all(1);
    cluster.isolate(1);
    // Lease window is election_timeout_ticks_min - drift = 7 ticks from the last heartbeat ack.
    for _ in 0..7 {
        cluster.node(1).tick();
    }
    drain(cluster.node(1));
    assert!(read_without_network(&mut cluster, 1, 6).is_empty(), "read served on an expired lease");
}

#[test]
fn lease_read_stops_once_leadership_transfer_starts() {
    let mut cluster = Cluster::new(3, with_lease_reads);
    cluster.tick_all(10);
    cluster.elect(1);
    cluster.tick_all(1);
    cluster.isolate(1);
    cluster.node(1).transfer_leader(2).expect("transfer");
    assert!(cluster.node(1).propose(b"x".to_vec()).is_err());
    assert!(read_without_network(&mut cluster, 1, 7).is_empty(), "lease used after TimeoutNow");
}

#[test]
fn restarted_replica_with_lease_reads_ignores_votes_for_an_election_timeout() {
    let mut cluster = Cluster::new(3, with_lease_reads);
    cluster.tick_all(10);
    cluster.elect(1);
    let term = cluster.node(1).status().term;
    let storage = cluster.nodes.remove(&2).expect("node 2").into_storage();
    let mut config = config(2);
    with_lease_reads(&mut config);
    let mut restarted = RawNode::new(config, storage).expect("restart");
    let last = restarted.status().last_index;
    restarted.step(vote_request(3, 2, term + 1, last, term));
    let (messages, _, _) = drain(&mut restarted);
    assert!(messages.is_empty(), "restarted replica voted inside a possible lease");
    for _ in 0..10 {
        restarted.tick();
    }
    drain(&mut restarted);
    restarted.step(vote_request(3, 2, term + 1, last, term));
    let (messages, _, _) = drain(&mut restarted);
    assert!(messages.iter().any(|m| matches!(m.body, MessageBody::VoteResponse { granted: true, .. })));
}

#[test]
fn lease_read_requires_check_quorum() {
    let mut config = config(1);
    config.lease_read = true;
    config.check_quorum = false;
    assert!(matches!(
        RawNode::new(config, MemStorage::new_with_conf(ConfState::with_voters([1]))),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn committed_entries_are_handed_out_within_committed_entries_bytes_max() {
    let mut node = RawNode::new(
        {
            let mut c = config(1);
            c.committed_entries_bytes_max = 100;
            c
        },
        MemStorage::new_with_conf(ConfState::with_voters([1])),
    )
    .expect("node");
    node.campaign();
    drain(&mut node);
    for _ in 0..5 {
        node.propose(vec![0; 40]).expect("propose");
    }
    let mut sizes = Vec::new();
    for _ in 0..20 {
        if !node.has_ready() {
            break;
        }
        let ready = node.ready();
        node.storage_mut().append(&ready.entries).expect("append");
        if let Some(hard_state) = ready.hard_state {
            node.storage_mut().set_hard_state(hard_state).expect("hard state");
        }
        if ready.must_persist() {
            node.on_persisted(ready.number);
        }
        if let Some(last) = ready.committed_entries.last() {
            node.on_applied(last.index);
            sizes.push(ready.committed_entries.len());
        }
    }
    assert_eq!(sizes.iter().sum::<usize>(), 5, "all 5 entries applied (the no-op was before)");
    assert!(sizes.iter().all(|&n| n <= 2), "64-byte entries, 100-byte budget: {sizes:?}");
}

#[test]
fn isolated_leader_lease_expires_before_a_new_leader_can_commit() {
    let mut cluster = Cluster::new(3, with_lease_reads);
    cluster.tick_all(10);
    cluster.elect(1);
    cluster.propose(1, b"a");
    cluster.tick_all(1);
    let old_commit = cluster.node(1).status().commit;
    cluster.isolate(1);
    // Tick everyone in lockstep until the majority side has a leader that committed more.
    let mut new_commit = old_commit;
    for _ in 0..60 {
        cluster.tick_all(1);
        let leaders: Vec<u64> = cluster.leaders().into_iter().filter(|&l| l != 1).collect();
        if let Some(&leader) = leaders.first() {
            new_commit = cluster.propose(leader, b"b");
            break;
        }
    }
    assert!(new_commit > old_commit, "majority side never committed");
    // Check-quorum has not yet deposed it: only the lease arithmetic stands in the way.
    assert_eq!(cluster.node(1).status().role, Role::Leader);
    let reads = read_without_network(&mut cluster, 1, 9);
    assert!(reads.is_empty(), "stale lease read at {old_commit} after {new_commit} committed");
}

#[test]
fn pending_reads_are_reported_dropped_when_leadership_is_lost() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.isolate(1);
    cluster.node(1).read_index(11).expect("read");
    cluster.node(1).read_index(12).expect("read");
    let term = cluster.node(1).status().term;
    cluster.node(1).step(vote_request(2, 1, term + 1, 100, term + 1));
    let ready = cluster.node(1).ready();
    assert_eq!(cluster.node(1).status().role, Role::Follower);
    assert_eq!(ready.dropped_reads, vec![11, 12]);
    assert!(ready.read_states.is_empty());
}

/// Regression: a follower whose disk was wiped rejoined with an empty log; the leader still believed
/// it matched up to its old acknowledgement, sent a heartbeat committing that far, and the follower
/// panicked ("commit beyond last index"). Now the follower clamps, the leader notices the lost log
/// from the rejection, and the follower catches up (here through a snapshot).
#[test]
fn a_follower_that_lost_its_log_is_brought_back() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    for i in 0..10u8 {
        cluster.propose(1, &[i]);
    }
    let snapshot_index = compact_to_applied(&mut cluster, 1);
    let wiped =
        RawNode::new(common::config(3), MemStorage::new_with_conf(ConfState::with_voters([1, 2, 3]))).expect("node");
    cluster.nodes.insert(3, wiped);
    cluster.tick_all(6);
    let index = cluster.propose(1, b"after");
    let status = cluster.node(3).status();
    assert_eq!(status.commit, index, "the wiped follower caught up");
    assert_eq!(cluster.node(3).storage().snapshot().expect("snapshot").meta.index, snapshot_index);
}

#[test]
fn a_replica_withholding_votes_grants_none_and_stands_for_nothing_until_it_holds_the_commit() {
    // Node 3 is rebuilt from nothing (empty log, term 0) and told the others had committed up to 3.
    let voters = [1, 2, 3];
    let mut cluster = Cluster::with_storages(
        vec![
            (1, storage_with_log(&voters, &[1, 1, 1], 1)),
            (2, storage_with_log(&voters, &[1, 1], 1)),
            (3, storage_with_log(&voters, &[], 0)),
        ],
        |_| {},
    );
    cluster.node(3).rejoin_after_loss(0, 3); // term 0: nothing to adopt, votes withheld until commit 3
                                             // Node 2 lacks entry 3; node 3's empty log would otherwise make node 2 look up to date.
    cluster.node(3).step(vote_request(2, 3, 2, 2, 1));
    let (messages, _, _) = drain(cluster.node(3));
    assert!(
        messages.iter().all(|m| !matches!(m.body, MessageBody::VoteResponse { granted: true, .. })),
        "a withheld vote was granted: {messages:?}"
    );
    // Its own election timer does not make it stand either.
    cluster.isolate(1);
    cluster.isolate(2);
    cluster.tick_all(100);
    assert_eq!(cluster.node(3).status().role, Role::Follower);
    // Once a leader brings its commit index to 3, it votes like anyone else.
    cluster.heal();
    cluster.elect(1);
    cluster.tick_all(2); // a heartbeat carries the commit index
    let (one, three) = (cluster.node(1).status(), cluster.node(3).status());
    assert!(three.commit >= 3, "leader {one:?}, node 3 {three:?}");
    let term = cluster.node(3).status().term;
    let last = cluster.node(1).status().last_index;
    cluster.isolate(1);
    cluster.node(3).step(vote_request(2, 3, term + 1, last, term));
    let (messages, _, _) = drain(cluster.node(3));
    assert!(
        messages.iter().any(|m| matches!(m.body, MessageBody::VoteResponse { granted: true, pre_vote: false })),
        "a caught-up replica refused a valid vote: {messages:?}"
    );
}

/// The index a rejoining replica was given may be an uncommitted tail that no leader will ever commit
/// past on an idle group (node 1's entries 3-5 here). Committing an entry of a term later than the one
/// it adopted ends the withholding too: that term's leader was elected without it, so its log, which
/// the replica now matches, holds everything committed before.
#[test]
fn a_replica_withholding_votes_votes_again_once_it_commits_an_entry_of_a_later_term() {
    let voters = [1, 2, 3, 4, 5];
    let mut cluster = Cluster::with_storages(
        vec![
            (1, storage_with_log(&voters, &[1, 1, 1, 1, 1], 1)),
            (2, storage_with_log(&voters, &[1, 1], 1)),
            (3, storage_with_log(&voters, &[], 0)),
            (4, storage_with_log(&voters, &[1, 1], 1)),
            (5, storage_with_log(&voters, &[1, 1], 1)),
        ],
        |_| {},
    );
    cluster.node(3).rejoin_after_loss(1, 5); // adopts term 1, withholds until commit 5 (node 1's tail)
    cluster.isolate(1);
    cluster.elect(2); // term 2, without node 3's vote; its first entry is index 3
    cluster.tick_all(2);
    let status = cluster.node(3).status();
    assert_eq!((status.commit, status.term), (3, 2), "node 3 committed term 2's first entry: {status:?}");
    assert_eq!(cluster.node(3).term(3), Some(2));
    assert!(!cluster.node(3).votes_withheld(), "still withheld with an entry of a later term committed");
    // It votes again: for an up-to-date candidate in term 3.
    cluster.node(3).step(vote_request(4, 3, 3, 3, 2));
    let (messages, _, _) = drain(cluster.node(3));
    assert!(
        messages.iter().any(|m| matches!(m.body, MessageBody::VoteResponse { granted: true, pre_vote: false })),
        "a replica holding a later term's committed entry refused a valid vote: {messages:?}"
    );
    // Control: the same replica given the same index, with nothing of a later term committed, withholds.
    let mut control = RawNode::new(config(3), storage_with_log(&voters, &[], 0)).unwrap();
    control.rejoin_after_loss(2, 5);
    assert!(control.votes_withheld());
}

#[test]
fn a_rejoining_replica_adopts_the_reported_term_as_already_voted_and_persists_it() {
    let voters = [1, 2, 3];
    let mut node = RawNode::new(config(3), storage_with_log(&voters, &[], 0)).unwrap();
    node.rejoin_after_loss(5, 0);
    let (messages, _, _) = drain(&mut node);
    assert!(messages.is_empty());
    let hard_state = node.storage().initial_state().unwrap().hard_state;
    assert_eq!((hard_state.term, hard_state.vote), (5, Some(3)), "the adopted term and vote are durable");
    // It may have voted in term 5 before it lost its state: no vote in term 5, for anyone.
    node.step(vote_request(2, 3, 5, 0, 0));
    let (messages, _, _) = drain(&mut node);
    assert!(
        messages.iter().all(|m| !matches!(m.body, MessageBody::VoteResponse { granted: true, .. })),
        "voted in the adopted term: {messages:?}"
    );
    // A later term is a fresh one (nothing withheld here: the reported commit was 0).
    node.step(vote_request(2, 3, 6, 0, 0));
    let (messages, _, _) = drain(&mut node);
    assert!(messages.iter().any(|m| matches!(m.body, MessageBody::VoteResponse { granted: true, pre_vote: false })));
}
