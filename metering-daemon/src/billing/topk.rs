//! The `k` largest values seen, in `O(k)` memory: a min-heap whose root is the smallest kept.

use std::{cmp::Reverse, collections::BinaryHeap};

/// Serialized as `{"k": .., "values": [..]}` (the heap order is not part of the state).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(from = "TopKState")]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Reverse<u64>>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            // Grown as values come: a month's heap (k = 433) would otherwise be allocated in
            // full by every EIP's first sample, 3.5 GB at once for a million new EIPs.
            heap: BinaryHeap::new(),
        }
    }

    /// Empties it to keep the `k` largest from now on, keeping its allocation: a series
    /// reuses its closed day's and month's heaps for the next ones (at midnight every EIP
    /// closes a day; freeing and growing a million heaps again was a good part of that round).
    pub fn reset(&mut self, k: usize) {
        self.heap.clear();
        self.k = k;
    }

    /// How many values it keeps at most.
    pub fn k(&self) -> usize {
        self.k
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn push(&mut self, value: u64) {
        if self.heap.len() < self.k {
            self.heap.push(Reverse(value));
        } else if let Some(mut smallest) = self.heap.peek_mut()
            && value > smallest.0
        {
            *smallest = Reverse(value);
        }
    }

    /// Asks the CPU to fetch the heap's root (what the next [`TopK::push`] reads first) into
    /// the cache. A round walks a million series whose heaps lie all over memory; fetching a
    /// few series ahead overlaps their cache misses instead of taking them one by one.
    pub fn prefetch(&self) {
        if let Some(root) = self.heap.peek() {
            prefetch(std::ptr::from_ref(root).cast());
        }
    }

    /// The smallest value kept: with `k` = 5, the 5th highest of all (or the smallest of all
    /// when fewer than 5 were pushed).
    pub fn min_kept(&self) -> Option<u64> {
        self.heap.peek().map(|r| r.0)
    }

    /// The `n`th largest value pushed (1-based). `None` if `n` is 0, more than were pushed, or
    /// beyond `k` (the caller sized `k` too small: a bug, not a data problem).
    pub fn nth_largest(&self, n: usize) -> Option<u64> {
        if n == 0 || n > self.heap.len() {
            return None;
        }
        if n == self.heap.len() {
            return self.min_kept(); // a full month: the heap's root, no sort
        }
        let mut values: Vec<u64> = self.heap.iter().map(|r| r.0).collect();
        let (_, nth, _) = values.select_nth_unstable_by(n - 1, |a, b| b.cmp(a));
        Some(*nth)
    }

    /// The kept values, largest first.
    pub fn sorted_desc(&self) -> Vec<u64> {
        let mut values: Vec<u64> = self.heap.iter().map(|r| r.0).collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        values
    }
}

/// A hint to load the cache line at `p`; nothing where there is no such instruction.
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address; it only warms the cache.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Equal when they keep the same values (heap layout aside).
impl PartialEq for TopK {
    fn eq(&self, other: &Self) -> bool {
        self.k == other.k && self.sorted_desc() == other.sorted_desc()
    }
}
impl Eq for TopK {}

#[derive(serde::Deserialize)]
struct TopKState {
    k: usize,
    values: Vec<u64>,
}

/// Written straight from the heap, as [`TopKState`] reads it: a checkpoint of a million
/// series would otherwise copy each of their heaps first.
impl serde::Serialize for TopK {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Values<'a>(&'a BinaryHeap<Reverse<u64>>);
        impl serde::Serialize for Values<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(|r| r.0))
            }
        }
        let mut state = serializer.serialize_struct("TopKState", 2)?;
        state.serialize_field("k", &self.k)?;
        state.serialize_field("values", &Values(&self.heap))?;
        state.end()
    }
}

impl From<TopKState> for TopK {
    fn from(s: TopKState) -> Self {
        let mut t = TopK::new(s.k);
        for v in s.values {
            t.push(v);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_k_and_values_and_reads_back() {
        let mut t = TopK::new(4);
        for v in [5, 1, 9, 9, 3, 7] {
            t.push(v);
        }
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["k"], 4);
        let mut values: Vec<u64> = serde_json::from_value(json["values"].clone()).unwrap();
        values.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(values, [9, 9, 7, 5]);
        assert_eq!(serde_json::from_value::<TopK>(json).unwrap(), t);
        let bytes = postcard::to_stdvec(&t).unwrap();
        assert_eq!(postcard::from_bytes::<TopK>(&bytes).unwrap(), t);
    }

    #[test]
    fn keeps_the_largest_with_ties() {
        let mut t = TopK::new(3);
        for v in [5, 1, 9, 9, 3, 7, 9] {
            t.push(v);
        }
        assert_eq!(t.sorted_desc(), vec![9, 9, 9]);
        assert_eq!(t.nth_largest(3), Some(9));
        assert_eq!(t.nth_largest(4), None);
    }

    #[test]
    fn min_kept_is_the_kth_largest() {
        let mut t = TopK::new(5);
        for v in 1..=100 {
            t.push(v);
        }
        assert_eq!(t.min_kept(), Some(96));
        let mut few = TopK::new(5);
        few.push(4);
        few.push(2);
        assert_eq!(few.min_kept(), Some(2));
    }
}
