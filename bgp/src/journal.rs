//! The Loc-RIB changes not yet looked at by every peer, kept once for all of them.
//!
//! Each flush appends the prefixes whose selection changed; each peer keeps its position
//! (a sequence number) and reads on from there as its send window allows. What every peer
//! has read is dropped. A route reflector's thousand clients thus share one list of the
//! flood's prefixes instead of holding a set each.

use std::collections::VecDeque;

use ipnet::IpNet;

/// Changed prefixes in the order they were recorded, addressed by sequence number.
#[derive(Debug, Default)]
pub struct ChangeJournal {
    /// Sequence number of `entries[0]`.
    first: u64,
    entries: VecDeque<IpNet>,
}

impl ChangeJournal {
    /// The sequence number the next recorded prefix gets: a peer at this position has
    /// read everything.
    pub fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Records changed prefixes after those already recorded.
    pub fn record(&mut self, prefixes: &[IpNet]) {
        self.entries.extend(prefixes.iter().copied());
    }

    /// The prefix at `position`, or None once past the end or already dropped.
    pub fn get(&self, position: u64) -> Option<IpNet> {
        let i = position.checked_sub(self.first)?;
        self.entries.get(usize::try_from(i).ok()?).copied()
    }

    /// How many recorded prefixes a reader at `position` has yet to read.
    pub fn behind(&self, position: u64) -> u64 {
        self.end().saturating_sub(position)
    }

    /// Drops what every reader has read: everything before `position`.
    pub fn drop_before(&mut self, position: u64) {
        let n = position
            .saturating_sub(self.first)
            .min(self.entries.len() as u64);
        self.entries.drain(..n as usize);
        self.first += n;
        // A flood's worth of capacity is not kept once it is read.
        if self.entries.is_empty() && self.entries.capacity() > 4096 {
            self.entries = VecDeque::new();
        }
    }

    /// Prefixes held (recorded and not yet dropped).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no prefix is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    #[test]
    fn readers_at_different_positions_share_one_list() {
        let mut j = ChangeJournal::default();
        assert_eq!(j.end(), 0);
        j.record(&[net("10.0.0.0/24"), net("10.0.1.0/24")]);
        let slow = 0;
        let fast = j.end();
        j.record(&[net("10.0.2.0/24")]);
        assert_eq!(j.behind(slow), 3);
        assert_eq!(j.behind(fast), 1);
        assert_eq!(j.get(fast), Some(net("10.0.2.0/24")));
        assert_eq!(j.get(j.end()), None);
        // The slow reader reads one; only what both have read goes.
        j.drop_before(slow + 1);
        assert_eq!(j.len(), 2);
        assert_eq!(j.get(0), None, "dropped");
        assert_eq!(j.get(1), Some(net("10.0.1.0/24")));
        assert_eq!(j.end(), 3, "positions do not move when entries are dropped");
        j.drop_before(j.end());
        assert!(j.is_empty());
        assert_eq!(j.behind(3), 0);
        // Dropping past the end or twice changes nothing.
        j.drop_before(100);
        j.drop_before(1);
        assert_eq!(j.end(), 3);
        j.record(&[net("2001:db8::/48")]);
        assert_eq!(j.get(3), Some(net("2001:db8::/48")));
    }
}
