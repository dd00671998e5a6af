//! `--verify`: after the run, every account's balance must equal its balance before the run plus the
//! net of the transfers the server answered `ok` (the generator tracked those per account), and money
//! must be conserved: the ledger sum over the run's accounts and externals is unchanged, and exactly
//! zero when the run created all of them. A server that loses, invents or double-applies money, or
//! posts a transfer it did not acknowledge (or the reverse), fails one of these checks.

use net::types::AccountId;
use serde::Serialize;

/// Mismatching accounts listed in the report (all are counted).
pub const MISMATCHES_LISTED_MAX: usize = 10;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BalanceMismatch {
    pub account_id: AccountId,
    pub balance_start: i64,
    pub expected: i64,
    pub actual: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub passed: bool,
    pub accounts_checked: usize,
    pub balance_mismatches: u64,
    pub first_mismatches: Vec<BalanceMismatch>,
    pub ledger_sum_start: i128,
    pub ledger_sum_end: i128,
    /// Whether the run created every account it checks (then both sums must be zero).
    pub created_fresh: bool,
    /// Why it failed, one sentence per broken rule; empty when it passed.
    pub problems: Vec<String>,
}

/// `ids`, `start`, `end` and `deltas` are parallel arrays (run accounts then externals).
pub fn check(ids: &[AccountId], start: &[i64], end: &[i64], deltas: &[i64], created_fresh: bool) -> VerifyReport {
    assert!(
        ids.len() == start.len() && ids.len() == end.len() && ids.len() == deltas.len(),
        "verify compares parallel arrays of one account list"
    );
    let mut mismatches = Vec::new();
    let mut mismatch_count = 0u64;
    for index in 0..ids.len() {
        let expected = start[index] as i128 + deltas[index] as i128;
        if expected != end[index] as i128 {
            mismatch_count += 1;
            if mismatches.len() < MISMATCHES_LISTED_MAX {
                mismatches.push(BalanceMismatch {
                    account_id: ids[index],
                    balance_start: start[index],
                    expected: expected.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
                    actual: end[index],
                });
            }
        }
    }
    let sum_start: i128 = start.iter().map(|balance| *balance as i128).sum();
    let sum_end: i128 = end.iter().map(|balance| *balance as i128).sum();
    let mut problems = Vec::new();
    if mismatch_count > 0 {
        problems.push(format!(
            "{mismatch_count} account(s) differ from their balance before the run plus the acknowledged transfers"
        ));
    }
    if sum_end != sum_start {
        problems.push(format!("money not conserved: ledger sum went from {sum_start} to {sum_end}"));
    }
    if created_fresh && (sum_start != 0 || sum_end != 0) {
        problems.push(format!("a fresh run's accounts and externals must sum to 0, got {sum_start} then {sum_end}"));
    }
    VerifyReport {
        passed: problems.is_empty(),
        accounts_checked: ids.len(),
        balance_mismatches: mismatch_count,
        first_mismatches: mismatches,
        ledger_sum_start: sum_start,
        ledger_sum_end: sum_end,
        created_fresh,
        problems,
    }
}

/// A verify that could not even read the balances.
pub fn failed_to_read(problem: String, created_fresh: bool) -> VerifyReport {
    VerifyReport {
        passed: false,
        accounts_checked: 0,
        balance_mismatches: 0,
        first_mismatches: Vec::new(),
        ledger_sum_start: 0,
        ledger_sum_end: 0,
        created_fresh,
        problems: vec![problem],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistent_balances_pass() {
        // Account 1 sent 30 to account 2; the external funded both with 100.
        let report = check(&[1, 2, 9], &[100, 100, -200], &[70, 130, -200], &[-30, 30, 0], true);
        assert!(report.passed, "{report:?}");
    }

    #[test]
    fn lost_money_and_unacknowledged_postings_fail() {
        let lost = check(&[1, 2, 9], &[100, 100, -200], &[70, 115, -200], &[-30, 30, 0], true);
        assert!(!lost.passed);
        assert_eq!(lost.balance_mismatches, 1);
        assert_eq!(lost.problems.len(), 3, "{:?}", lost.problems);
        // Conserved but not what was acknowledged: a posting the generator never saw answered ok.
        let extra = check(&[1, 2, 9], &[100, 100, -200], &[60, 140, -200], &[-30, 30, 0], true);
        assert!(!extra.passed);
        assert_eq!(extra.balance_mismatches, 2);
    }
}
