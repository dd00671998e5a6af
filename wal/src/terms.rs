//! Term lookup by index. Terms change rarely (once per election), so runs of equal terms take
//! one entry each instead of eight bytes per record.

#[derive(Debug, Default)]
pub struct TermRuns {
    /// (first index of the run, term), indexes and terms strictly increasing.
    starts: Vec<(u64, u64)>,
}

impl TermRuns {
    pub fn last_term(&self) -> u64 {
        self.starts.last().map_or(0, |&(_, term)| term)
    }

    /// Records that `index` (the next index) carries `term`; the caller ensures term never drops.
    pub fn push(&mut self, index: u64, term: u64) {
        debug_assert!(term >= self.last_term());
        if self.starts.is_empty() || term > self.last_term() {
            self.starts.push((index, term));
        }
    }

    /// Term of `index`; the caller checks that `index` is inside the log.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        let runs_at_or_before = self.starts.partition_point(|&(start, _)| start <= index);
        runs_at_or_before.checked_sub(1).map(|position| self.starts[position].1)
    }

    pub fn truncate_from(&mut self, index: u64) {
        let keep = self.starts.partition_point(|&(start, _)| start < index);
        self.starts.truncate(keep);
    }

    /// Drops runs wholly before `index` so memory follows the retained log.
    pub fn forget_before(&mut self, index: u64) {
        let runs_at_or_before = self.starts.partition_point(|&(start, _)| start <= index);
        if runs_at_or_before > 1 {
            self.starts.drain(..runs_at_or_before - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_answer_terms_and_truncate() {
        let mut runs = TermRuns::default();
        for (index, term) in [(1, 1), (2, 1), (3, 2), (4, 5), (5, 5)] {
            runs.push(index, term);
        }
        let terms: Vec<_> = (1..=5).map(|i| runs.term_at(i)).collect();
        assert_eq!(terms, [Some(1), Some(1), Some(2), Some(5), Some(5)]);
        runs.truncate_from(4);
        assert_eq!(runs.last_term(), 2);
        runs.forget_before(3);
        assert_eq!(runs.term_at(3), Some(2));
        assert_eq!(runs.term_at(0), None);
    }
}
