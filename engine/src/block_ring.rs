//! A FIFO of `Copy` items stored in fixed-size blocks: pushing never moves what is already stored.
//!
//! Why not `VecDeque`: it grows by doubling, and a doubling copies every item into fresh memory that
//! the kernel then faults in page by page, all inside the push that crossed the boundary. The id table
//! of a partition holds up to hundreds of thousands of 64-byte entries, and under uniform load every
//! partition of a node crosses each boundary in the same few rounds: at 64 partitions that was about
//! 1 GB of copying and faulting in one stall of the shard. Here a full block is simply followed by
//! another (taken from a small pool of emptied ones when there is one), so a push costs the same at any
//! size and memory follows the live count in steps of one block.

use std::collections::VecDeque;

/// Items per block (a power of two, so a position splits into block and offset with a shift).
pub const BLOCK_ITEMS: usize = 4096;
const BLOCK_SHIFT: u32 = BLOCK_ITEMS.trailing_zeros();
const _: () = assert!(BLOCK_ITEMS.is_power_of_two());

#[derive(Debug)]
pub struct BlockRing<T: Copy> {
    /// Every block but the last is full; the first one's items before `head` have been popped.
    blocks: VecDeque<Vec<T>>,
    head: usize,
    len: usize,
    /// Emptied blocks kept for reuse (their capacity stays allocated), at most `spare_blocks_max`.
    spare: Vec<Vec<T>>,
    spare_blocks_max: usize,
}

/// A copy holds the items, not the pool of emptied blocks (a replica's speculative state is a clone of
/// its committed one: up to `spare_blocks_max` blocks of nothing each time).
impl<T: Copy> Clone for BlockRing<T> {
    fn clone(&self) -> Self {
        // Every block with a whole block's room, so the copy's pushes never move what it holds either.
        let blocks = self
            .blocks
            .iter()
            .map(|block| {
                let mut copy = Vec::with_capacity(BLOCK_ITEMS);
                copy.extend_from_slice(block);
                copy
            })
            .collect();
        BlockRing { blocks, head: self.head, len: self.len, spare: Vec::new(), spare_blocks_max: self.spare_blocks_max }
    }
}

impl<T: Copy> BlockRing<T> {
    /// `spare_blocks_max`: emptied blocks kept for reuse rather than freed (memory held beyond the live
    /// items is at most that many blocks).
    pub fn new(spare_blocks_max: usize) -> Self {
        BlockRing { blocks: VecDeque::new(), head: 0, len: 0, spare: Vec::new(), spare_blocks_max }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn push_back(&mut self, item: T) {
        if self.blocks.back().is_none_or(|block| block.len() == BLOCK_ITEMS) {
            let block = self.spare.pop().unwrap_or_else(|| Vec::with_capacity(BLOCK_ITEMS));
            debug_assert!(block.is_empty() && block.capacity() >= BLOCK_ITEMS);
            self.blocks.push_back(block);
        }
        self.blocks.back_mut().expect("ensured above").push(item);
        self.len += 1;
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let first = self.blocks.front()?;
        if self.head == first.len() {
            // Only the last block can be partly filled, so this one is empty and the ring with it.
            assert_eq!(self.len, 0, "an exhausted first block is the last one");
            return None;
        }
        let item = first[self.head];
        self.head += 1;
        self.len -= 1;
        if self.head == BLOCK_ITEMS {
            let mut block = self.blocks.pop_front().expect("front exists");
            self.head = 0;
            if self.spare.len() < self.spare_blocks_max {
                block.clear();
                self.spare.push(block);
            }
        }
        Some(item)
    }

    #[inline]
    pub fn back(&self) -> Option<&T> {
        if self.len == 0 {
            return None;
        }
        self.blocks.back().and_then(|block| block.last())
    }

    /// The item at `position` from the front; panics past the end, as slice indexing does.
    #[inline]
    pub fn get(&self, position: usize) -> &T {
        assert!(position < self.len, "position {position} past the ring's {} items", self.len);
        let at = self.head + position;
        &self.blocks[at >> BLOCK_SHIFT][at & (BLOCK_ITEMS - 1)]
    }

    /// The items from `position` to the end, in order, starting there directly.
    pub fn iter_from(&self, position: usize) -> impl Iterator<Item = &T> + '_ {
        assert!(position <= self.len, "position {position} past the ring's {} items", self.len);
        let at = self.head + position;
        let (first_block, offset) = (at >> BLOCK_SHIFT, at & (BLOCK_ITEMS - 1));
        self.blocks.iter().skip(first_block).enumerate().flat_map(move |(n, block)| {
            let from = if n == 0 { offset.min(block.len()) } else { 0 };
            block[from..].iter()
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.iter_from(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    proptest! {
        /// Any mix of pushes and pops gives what a VecDeque gives, at every position.
        #[test]
        fn matches_a_vecdeque(ops in prop::collection::vec((any::<bool>(), 1usize..3 * BLOCK_ITEMS), 1..12)) {
            let mut ring = BlockRing::new(2);
            let mut model = VecDeque::new();
            let mut next = 0u64;
            for (push, count) in ops {
                for _ in 0..count {
                    if push {
                        ring.push_back(next);
                        model.push_back(next);
                        next += 1;
                    } else {
                        prop_assert_eq!(ring.pop_front(), model.pop_front());
                    }
                }
                prop_assert_eq!(ring.len(), model.len());
                prop_assert_eq!(ring.back(), model.back());
                prop_assert!(ring.iter().eq(model.iter()));
                for position in [0, model.len() / 3, model.len().saturating_sub(1)] {
                    if position < model.len() {
                        prop_assert_eq!(ring.get(position), &model[position]);
                    }
                    prop_assert!(ring.iter_from(position).eq(model.range(position..)));
                }
                prop_assert!(ring.spare.len() <= 2);
            }
        }
    }

    #[test]
    fn blocks_are_reused_and_items_never_move() {
        let mut ring = BlockRing::new(1);
        (0..BLOCK_ITEMS as u32 * 2).for_each(|n| ring.push_back(n));
        let second_block = ring.get(BLOCK_ITEMS) as *const u32;
        (0..BLOCK_ITEMS).for_each(|_| assert!(ring.pop_front().is_some()));
        assert_eq!(ring.spare.len(), 1, "the emptied block is kept");
        let copy = ring.clone();
        assert!(copy.spare.is_empty(), "a copy does not carry the pool");
        assert!(copy.iter().eq(ring.iter()), "a copy holds the same items");
        assert!(copy.blocks.iter().all(|block| block.capacity() >= BLOCK_ITEMS), "with room to grow in place");
        assert_eq!(ring.get(0) as *const u32, second_block, "popping did not move the rest");
        (0..BLOCK_ITEMS as u32).for_each(|n| ring.push_back(n));
        assert!(ring.spare.is_empty(), "the next block came from the pool");
        assert_eq!(ring.get(0) as *const u32, second_block, "pushing did not move the rest");
        assert_eq!(ring.len(), 2 * BLOCK_ITEMS);
    }
}
