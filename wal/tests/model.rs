//! Random append / submit / poll / wait / truncate / remove / reopen sequences checked after
//! every step against an in-memory model of the log.

mod common;

use common::*;
use proptest::prelude::*;
use std::path::Path;
use wal::Wal;

#[derive(Debug, Clone)]
enum Op {
    Append {
        count: u64,
        new_term: bool,
    },
    Submit,
    Poll,
    Wait,
    TruncateSuffix {
        back: u64,
    },
    RemovePrefix {
        forward: u64,
    },
    /// Without `wait_first`, unsubmitted appends are lost, like a crash of the caller.
    Reopen {
        wait_first: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..25u64, proptest::bool::weighted(0.2))
            .prop_map(|(count, new_term)| Op::Append { count, new_term }),
        2 => Just(Op::Submit),
        2 => Just(Op::Poll),
        1 => Just(Op::Wait),
        1 => (0..40u64).prop_map(|back| Op::TruncateSuffix { back }),
        1 => (0..120u64).prop_map(|forward| Op::RemovePrefix { forward }),
        1 => proptest::bool::ANY.prop_map(|wait_first| Op::Reopen { wait_first }),
    ]
}

struct Model {
    first_index: u64,
    /// Terms of entries first_index.. in order.
    terms: Vec<u64>,
    term: u64,
}

impl Model {
    fn last_index(&self) -> u64 {
        self.first_index + self.terms.len() as u64 - 1
    }
}

fn apply(mut wal: Wal, model: &mut Model, dir: &Path, op: &Op) -> Wal {
    match *op {
        Op::Append { count, new_term } => {
            model.term += u64::from(new_term);
            let from = model.last_index() + 1;
            append_range(&mut wal, from, from + count - 1, model.term);
            model.terms.extend(std::iter::repeat_n(model.term, count as usize));
        }
        Op::Submit => drop(wal.submit().expect("submit")),
        Op::Poll => drop(wal.poll().expect("poll")),
        Op::Wait => assert_eq!(wal.wait().expect("wait"), model.last_index()),
        Op::TruncateSuffix { back } => {
            let from = (model.last_index() + 1).saturating_sub(back).max(model.first_index);
            wal.truncate_suffix(from).expect("truncate");
            model.terms.truncate((from - model.first_index) as usize);
        }
        Op::RemovePrefix { forward } => {
            let before = model.first_index + forward;
            wal.remove_prefix(before).expect("remove");
            let first = wal.first_index();
            assert!(first >= model.first_index && (first <= before || first == model.first_index));
            model.terms.drain(..(first - model.first_index) as usize);
            model.first_index = first;
        }
        Op::Reopen { wait_first } => return reopen(wal, model, dir, wait_first),
    }
    wal
}

fn reopen(mut wal: Wal, model: &mut Model, dir: &Path, wait_first: bool) -> Wal {
    if wait_first {
        wal.wait().expect("wait");
    }
    let durable = wal.durable_index();
    drop(wal);
    let (wal, report) = open(dir);
    assert_eq!(report.truncated_bytes, 0, "clean drops leave no torn tail");
    assert!(wal.last_index() >= durable, "durable entries survive");
    assert!(wal.last_index() <= model.last_index());
    model.terms.truncate((wal.last_index() + 1 - model.first_index) as usize);
    wal
}

fn check(wal: &Wal, model: &Model) {
    assert_eq!(wal.first_index(), model.first_index);
    assert_eq!(wal.last_index(), model.last_index());
    assert!(wal.durable_index() <= wal.last_index());
    verify(wal, |index| model.terms[(index - model.first_index) as usize]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = open(dir.path());
        let mut model = Model { first_index: 1, terms: Vec::new(), term: 1 };
        for op in &ops {
            wal = apply(wal, &mut model, dir.path(), op);
            check(&wal, &model);
        }
        let last = wal.wait().expect("wait");
        drop(wal);
        let (wal, _) = open(dir.path());
        prop_assert_eq!(wal.last_index(), last);
        check(&wal, &model);
    }
}
