//! The sessions of one user or of one conversation.

/// Session keys in increasing order, without duplicates.
///
/// Most users and conversations have one session or a few. A sorted `Vec` costs one allocation
/// of 8 bytes per member, where a `BTreeSet` starts with a node of about 100 bytes, and fan-out
/// walks it as a slice. Inserting and removing move the keys after the position: a few hundred
/// nanoseconds in a conversation of 1 000.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Members(Vec<u64>);

impl Members {
    /// Adds `key`; returns whether it was new.
    pub fn insert(&mut self, key: u64) -> bool {
        match self.0.binary_search(&key) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, key);
                true
            }
        }
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&mut self, key: u64) -> bool {
        match self.0.binary_search(&key) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().copied()
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
        assert!(members.remove(3) && !members.remove(3));
        assert_eq!(members.iter().collect::<Vec<_>>(), [1, 5]);
        assert!(members.remove(1) && members.remove(5) && members.is_empty());
    }
}
