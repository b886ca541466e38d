//! Inclusive ranges of key hashes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An inclusive range `[first, last]` of 64-bit key hashes.
///
/// Inclusive ends let one range cover the whole hash space (`0..=u64::MAX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HashRange {
    /// Lowest hash in the range.
    pub first: u64,
    /// Highest hash in the range.
    pub last: u64,
}

/// Errors from building, parsing or splitting a [`HashRange`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    /// `first` is greater than `last`.
    #[error("range start {first:#x} is above its end {last:#x}")]
    Inverted {
        /// Start given.
        first: u64,
        /// End given.
        last: u64,
    },
    /// The split point does not fall strictly inside the range.
    #[error("split point {at:#x} is not inside ({first:#x}, {last:#x}]")]
    BadSplit {
        /// Split point.
        at: u64,
        /// Range start.
        first: u64,
        /// Range end.
        last: u64,
    },
    /// The text is not `FIRST..LAST` or `FIRST..=LAST` with hex or decimal bounds.
    #[error("cannot parse range {0:?}: expected FIRST..=LAST (hex with 0x, or decimal)")]
    Parse(String),
}

impl HashRange {
    /// The whole hash space.
    pub const FULL: HashRange = HashRange { first: 0, last: u64::MAX };

    /// A range `[first, last]`.
    pub fn new(first: u64, last: u64) -> Result<Self, RangeError> {
        if first > last {
            return Err(RangeError::Inverted { first, last });
        }
        Ok(Self { first, last })
    }

    /// Whether `hash` lies in the range.
    #[inline]
    pub fn contains(&self, hash: u64) -> bool {
        self.first <= hash && hash <= self.last
    }

    /// Whether the two ranges share at least one hash.
    pub fn overlaps(&self, other: &HashRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// Whether `other` lies wholly inside this range.
    pub fn covers(&self, other: &HashRange) -> bool {
        self.first <= other.first && other.last <= self.last
    }

    /// Number of hashes in the range, as u128 since the full range holds 2^64.
    pub fn width(&self) -> u128 {
        u128::from(self.last - self.first) + 1
    }

    /// Splits into `[first, at - 1]` and `[at, last]`.
    pub fn split_at(&self, at: u64) -> Result<(HashRange, HashRange), RangeError> {
        if at <= self.first || at > self.last {
            return Err(RangeError::BadSplit { at, first: self.first, last: self.last });
        }
        Ok((HashRange { first: self.first, last: at - 1 }, HashRange { first: at, last: self.last }))
    }

    /// Divides the range into `parts` contiguous ranges of (nearly) equal width.
    ///
    /// `parts` is clamped to `1..=width`.
    pub fn divide(&self, parts: u64) -> Vec<HashRange> {
        let parts = u128::from(parts.max(1)).min(self.width());
        let width = self.width();
        (0..parts)
            .map(|i| {
                let first = u128::from(self.first) + width * i / parts;
                let next = u128::from(self.first) + width * (i + 1) / parts;
                // Both bounds fit in u64: `next - 1 <= last`.
                HashRange { first: first as u64, last: (next - 1) as u64 }
            })
            .collect()
    }
}

impl fmt::Display for HashRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}..={:#018x}", self.first, self.last)
    }
}

fn parse_bound(text: &str) -> Option<u64> {
    let text = text.trim().replace('_', "");
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

impl FromStr for HashRange {
    type Err = RangeError;

    /// Parses `FIRST..=LAST` (inclusive) or `FIRST..LAST` (exclusive end).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || RangeError::Parse(text.to_string());
        if let Some((a, b)) = text.split_once("..=") {
            return HashRange::new(parse_bound(a).ok_or_else(bad)?, parse_bound(b).ok_or_else(bad)?);
        }
        let (a, b) = text.split_once("..").ok_or_else(bad)?;
        let end = parse_bound(b).ok_or_else(bad)?;
        HashRange::new(parse_bound(a).ok_or_else(bad)?, end.checked_sub(1).ok_or_else(bad)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn full_range_divides_evenly() {
        let parts = HashRange::FULL.divide(4);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], HashRange { first: 0, last: 0x3fff_ffff_ffff_ffff });
        assert_eq!(parts[3].last, u64::MAX);
    }

    #[test]
    fn parses_both_forms() {
        assert_eq!("0x10..=0x20".parse(), Ok(HashRange { first: 16, last: 32 }));
        assert_eq!("16..33".parse(), Ok(HashRange { first: 16, last: 32 }));
        assert!("5..=4".parse::<HashRange>().is_err());
        assert!("abc".parse::<HashRange>().is_err());
        assert!("0..0".parse::<HashRange>().is_err());
    }

    proptest! {
        #[test]
        fn divide_tiles_without_gaps(first in any::<u64>(), len in any::<u64>(), parts in 1u64..64) {
            let range = HashRange { first, last: first.saturating_add(len) };
            let pieces = range.divide(parts);
            prop_assert_eq!(pieces[0].first, range.first);
            prop_assert_eq!(pieces.last().unwrap().last, range.last);
            for pair in pieces.windows(2) {
                prop_assert_eq!(pair[0].last + 1, pair[1].first);
                prop_assert!(pair[0].first <= pair[0].last);
            }
        }

        #[test]
        fn split_keeps_every_hash_in_exactly_one_half(first in any::<u64>(), last in any::<u64>(), at in any::<u64>(), probe in any::<u64>()) {
            let Ok(range) = HashRange::new(first.min(last), first.max(last)) else { unreachable!() };
            match range.split_at(at) {
                Ok((low, high)) => {
                    prop_assert_eq!(range.contains(probe), low.contains(probe) || high.contains(probe));
                    prop_assert!(!(low.contains(probe) && high.contains(probe)));
                }
                Err(_) => prop_assert!(at <= range.first || at > range.last),
            }
        }
    }
}
