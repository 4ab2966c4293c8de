//! The sessions of one user or of one conversation.

use std::collections::BTreeSet;

/// Session keys in increasing order, without duplicates.
///
/// Most users and conversations have one session or a few: those are a sorted `Vec`, one
/// allocation of 8 bytes per member, where a `BTreeSet` starts with a node of about 100 bytes,
/// and fan-out walks them as a slice. Above [`Members::MANY`] members the keys move to a
/// `BTreeSet`, so that thousands of sessions leaving one by one do not each shift the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Members {
    Few(Vec<u64>),
    Many(BTreeSet<u64>),
}

impl Default for Members {
    fn default() -> Self {
        Members::Few(Vec::new())
    }
}

impl Members {
    /// Where a `Vec` gives way to a `BTreeSet`.
    pub const MANY: usize = 128;

    /// Adds `key`; returns whether it was new.
    pub fn insert(&mut self, key: u64) -> bool {
        match self {
            Members::Few(keys) => match keys.binary_search(&key) {
                Ok(_) => false,
                Err(at) => {
                    keys.insert(at, key);
                    if keys.len() > Self::MANY {
                        *self = Members::Many(keys.iter().copied().collect());
                    }
                    true
                }
            },
            Members::Many(keys) => keys.insert(key),
        }
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&mut self, key: u64) -> bool {
        match self {
            Members::Few(keys) => match keys.binary_search(&key) {
                Ok(at) => {
                    keys.remove(at);
                    true
                }
                Err(_) => false,
            },
            Members::Many(keys) => keys.remove(&key),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Members::Few(keys) => keys.is_empty(),
            Members::Many(keys) => keys.is_empty(),
        }
    }

    /// The keys, in increasing order, appended to `keys` (fan-out's list of recipients: a copy
    /// of a slice, or one walk of the set, without an iterator chained over both).
    pub fn append_to(&self, keys: &mut Vec<u64>) {
        match self {
            Members::Few(few) => keys.extend_from_slice(few),
            Members::Many(many) => {
                keys.reserve(many.len());
                keys.extend(many.iter().copied());
            }
        }
    }

    /// The keys, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let (few, many) = match self {
            Members::Few(keys) => (Some(keys.iter().copied()), None),
            Members::Many(keys) => (None, Some(keys.iter().copied())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_keys_sorted_and_unique() {
        let mut members = Members::default();
        assert!(members.insert(5) && members.insert(1) && members.insert(3));
        assert!(!members.insert(3), "already there");
        assert_eq!(members.iter().collect::<Vec<_>>(), [1, 3, 5]);
        let mut appended = vec![9];
        members.append_to(&mut appended);
        assert_eq!(appended, [9, 1, 3, 5]);
        assert!(members.remove(3) && !members.remove(3));
        assert_eq!(members.iter().collect::<Vec<_>>(), [1, 5]);
        assert!(members.remove(1) && members.remove(5) && members.is_empty());
    }

    #[test]
    fn many_members_behave_the_same_in_a_set() {
        let mut members = Members::default();
        for key in (0..=Members::MANY as u64 * 2).rev() {
            assert!(members.insert(key));
        }
        assert!(matches!(members, Members::Many(_)));
        assert!(!members.insert(7));
        let keys: Vec<u64> = members.iter().collect();
        assert_eq!(keys, (0..=Members::MANY as u64 * 2).collect::<Vec<_>>());
        let mut appended = vec![u64::MAX];
        members.append_to(&mut appended);
        assert_eq!(appended[1..], keys[..]);
        assert!(members.remove(7) && !members.remove(7));
        for key in keys {
            members.remove(key);
        }
        assert!(members.is_empty());
    }
}
