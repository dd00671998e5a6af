//! Property tests: log operations checked against a plain `Vec` model.

mod common;

use common::*;
use proptest::prelude::*;
use raft::{ConfState, MemStorage, MessageBody, RawNode, Storage};

#[derive(Clone, Debug)]
enum StorageOp {
    /// Append `count` entries of `term` starting `back` entries before the end (truncating).
    Append { back: u64, count: u64, term: u64 },
    /// Compact at `fraction`/16 of the way through the log.
    Compact { fraction: u64 },
}

fn storage_op() -> impl Strategy<Value = StorageOp> {
    prop_oneof![
        3 => (0u64..4, 1u64..5, 1u64..6).prop_map(|(back, count, term)| StorageOp::Append { back, count, term }),
        1 => (0u64..17).prop_map(|fraction| StorageOp::Compact { fraction }),
    ]
}

proptest! {
    #[test]
    fn mem_storage_matches_a_vec_model(ops in proptest::collection::vec(storage_op(), 1..40)) {
        let mut storage = MemStorage::new_with_conf(ConfState::with_voters([1]));
        // model[i] = term of index i + 1; indexes <= snapshot are compacted.
        let mut model: Vec<u64> = Vec::new();
        let mut snapshot = 0u64;
        for op in ops {
            match op {
                StorageOp::Append { back, count, term } => {
                    let last = model.len() as u64;
                    let first = (last + 1).saturating_sub(back).max(snapshot + 1);
                    let entries: Vec<_> = (first..first + count).map(|i| entry(i, term)).collect();
                    storage.append(&entries).expect("append within range");
                    model.truncate(first as usize - 1);
                    model.extend(std::iter::repeat_n(term, count as usize));
                }
                StorageOp::Compact { fraction } => {
                    let last = model.len() as u64;
                    let at = snapshot + (last - snapshot) * fraction / 16;
                    if at > snapshot {
                        storage.create_snapshot(at, ConfState::with_voters([1]), Default::default()).expect("compact");
                        snapshot = at;
                    }
                }
            }
            prop_assert_eq!(storage.first_index().expect("first"), snapshot + 1);
            prop_assert_eq!(storage.last_index().expect("last"), model.len() as u64);
            for index in snapshot + 1..=model.len() as u64 {
                prop_assert_eq!(storage.term(index).expect("term"), model[index as usize - 1]);
            }
            if snapshot > 0 {
                prop_assert!(storage.term(snapshot - 1).is_err() || snapshot == 1);
            }
        }
    }

    #[test]
    fn follower_log_follows_leader_appends_like_the_model(
        leader_steps in proptest::collection::vec(0u64..3, 1..25),
        follower_steps in proptest::collection::vec(0u64..3, 0..25),
        appends in proptest::collection::vec((0usize..30, 1usize..6), 1..30),
    ) {
        // Logs with non-decreasing terms; the leader's terms are all above the follower's
        // divergent suffix possibilities by construction (leader term 10 + steps).
        let mut leader = Vec::new();
        let mut term = 1;
        for step in leader_steps { term += step; leader.push(term); }
        let mut follower = Vec::new();
        let mut term = 1;
        for step in follower_steps { term += step; follower.push(term); }
        let leader_term = 100;
        let mut node = RawNode::new(config(2), storage_with_log(&[1, 2, 3], &follower, leader_term)).expect("node");
        let mut model = follower.clone();
        for (prev, count) in appends {
            let prev = prev.min(leader.len());
            let end = (prev + count).min(leader.len());
            let prev_term = if prev == 0 { 0 } else { leader[prev - 1] };
            let entries: Vec<_> = (prev + 1..=end).map(|i| entry(i as u64, leader[i - 1])).collect();
            node.step(message(1, 2, leader_term, MessageBody::Append {
                prev_log_index: prev as u64,
                prev_log_term: prev_term,
                entries,
                commit: 0,
            }));
            drain(&mut node);
            let matches = prev == 0 || model.get(prev - 1) == Some(&prev_term);
            if matches {
                for i in prev + 1..=end {
                    match model.get(i - 1) {
                        Some(&t) if t == leader[i - 1] => {}
                        _ => { model.truncate(i - 1); model.push(leader[i - 1]); }
                    }
                }
            }
            let actual: Vec<u64> = (1..=node.status().last_index).map(|i| node.term(i).expect("term")).collect();
            prop_assert_eq!(&actual, &model);
            let stored: Vec<u64> = (1..=node.storage().last_index().expect("last")).map(|i| node.storage().term(i).expect("term")).collect();
            prop_assert_eq!(&stored, &model, "storage holds what the log says");
        }
    }
}
