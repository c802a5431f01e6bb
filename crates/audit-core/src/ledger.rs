//! The hash chain: Merkle roots over sealed events, chained block hashes, and
//! the comparison that tells exactly what changed in a block.
//!
//! ```text
//! leaf(id, h)   = SHA-256(0x00 || id:i64be || h)         h = event hash
//! node(l, r)    = SHA-256(0x01 || l || r)                an odd node is promoted
//! root([])      = SHA-256("AUDIT-EMPTY-V1")
//! block_hash    = SHA-256("AUDIT-BLOCK-V1" || block_id:i64be || prev_hash[32]
//!                         || merkle_root[32] || event_count:i64be || first_event_id:i64be
//!                         || last_event_id:i64be || lsn_lo:u64be || lsn_hi:u64be
//!                         || sealed_at_unix_micros:i64be)
//! ```
//! The genesis block's `prev_hash` is 32 zero bytes. A block seals the events
//! of the transactions whose commit records lie in `[lsn_lo, lsn_hi]`, in the
//! order they committed.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub const GENESIS_PREV_HASH: Hash = [0; 32];

pub fn leaf(id: i64, event_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(id.to_be_bytes());
    h.update(event_hash);
    h.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Merkle root of `(id, event hash)` leaves, in the given (id) order.
pub fn merkle_root(leaves: &[(i64, Hash)]) -> Hash {
    if leaves.is_empty() {
        return Sha256::digest(b"AUDIT-EMPTY-V1").into();
    }
    let mut level: Vec<Hash> = leaves.iter().map(|(id, h)| leaf(*id, h)).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node(l, r),
                [single] => *single,
                _ => unreachable!("chunks(2)"),
            })
            .collect();
    }
    level[0]
}

/// The fields of a block that its hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    pub block_id: i64,
    pub prev_hash: Hash,
    pub merkle_root: Hash,
    pub event_count: i64,
    pub first_event_id: i64,
    pub last_event_id: i64,
    pub lsn_lo: u64,
    pub lsn_hi: u64,
    pub sealed_at_unix_micros: i64,
}

pub fn block_hash(b: &BlockHeader) -> Hash {
    let mut h = Sha256::new();
    h.update(b"AUDIT-BLOCK-V1");
    h.update(b.block_id.to_be_bytes());
    h.update(b.prev_hash);
    h.update(b.merkle_root);
    h.update(b.event_count.to_be_bytes());
    h.update(b.first_event_id.to_be_bytes());
    h.update(b.last_event_id.to_be_bytes());
    h.update(b.lsn_lo.to_be_bytes());
    h.update(b.lsn_hi.to_be_bytes());
    h.update(b.sealed_at_unix_micros.to_be_bytes());
    h.finalize().into()
}

/// Splits concatenated 32-byte hashes.
pub fn split_hashes(bytes: &[u8]) -> Option<Vec<Hash>> {
    if !bytes.len().is_multiple_of(32) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32-byte chunk"))
            .collect(),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// An event's content no longer matches the hash it was sealed (or written) with.
    Modified,
    /// A sealed event is gone.
    Missing,
    /// An event that the block it names never sealed.
    Inserted,
    /// An event carries the content sealed for another event of the block.
    Reordered,
    /// A block's own hash, Merkle root or link to its predecessor does not hold.
    BadLink,
}

impl ProblemKind {
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Modified => "modified",
            ProblemKind::Missing => "missing",
            ProblemKind::Inserted => "inserted",
            ProblemKind::Reordered => "reordered",
            ProblemKind::BadLink => "bad link",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub event_id: Option<i64>,
    pub block_id: Option<i64>,
    pub detail: String,
}

/// Compares what a block sealed with the events found for it.
///
/// `sealed`: `(id, hash)` from the block, id order. `found`: `(id, recomputed
/// hash)` of the events now stored as sealed by this block, id order. `hash_as(a, b)`
/// is the hash event `a`'s content would have under id `b` (None if unknown),
/// which tells a moved event from a modified one. `deleted`: ids removed by
/// retention, expected to be absent.
pub fn compare_block(
    block_id: i64,
    sealed: &[(i64, Hash)],
    found: &[(i64, Hash)],
    hash_as: &dyn Fn(i64, i64) -> Option<Hash>,
    deleted: &dyn Fn(i64) -> bool,
) -> Vec<Problem> {
    /// Past this many damaged events, moved ones are reported as modified.
    const MAX_REORDER_CANDIDATES: usize = 1000;
    let found_by_id: HashMap<i64, &Hash> = found.iter().map(|(id, h)| (*id, h)).collect();
    let sealed_by_id: HashMap<i64, &Hash> = sealed.iter().map(|(id, h)| (*id, h)).collect();
    let damaged: Vec<i64> = sealed
        .iter()
        .filter(|(id, h)| found_by_id.get(id).is_none_or(|f| *f != h) && !deleted(*id))
        .map(|(id, _)| *id)
        .collect();
    let mut problems = Vec::new();
    let problem = |kind, id, detail: String| Problem {
        kind,
        event_id: Some(id),
        block_id: Some(block_id),
        detail,
    };
    for &id in &damaged {
        if !found_by_id.contains_key(&id) {
            problems.push(problem(
                ProblemKind::Missing,
                id,
                format!("event {id} sealed in block {block_id} is gone"),
            ));
            continue;
        }
        let moved_from = (damaged.len() <= MAX_REORDER_CANDIDATES)
            .then(|| {
                damaged.iter().copied().find(|&other| {
                    other != id && hash_as(id, other).as_ref() == sealed_by_id.get(&other).copied()
                })
            })
            .flatten();
        match moved_from {
            Some(other) => problems.push(problem(
                ProblemKind::Reordered,
                id,
                format!("event {id} holds the content sealed as event {other}"),
            )),
            None => problems.push(problem(
                ProblemKind::Modified,
                id,
                format!("event {id} differs from what block {block_id} sealed"),
            )),
        }
    }
    for (id, _) in found {
        if !sealed_by_id.contains_key(id) {
            problems.push(problem(
                ProblemKind::Inserted,
                *id,
                format!(
                    "event {id} is stored as sealed by block {block_id}, which never sealed it"
                ),
            ));
        }
    }
    problems.sort_by_key(|p| p.event_id);
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> Hash {
        [n; 32]
    }

    #[test]
    fn merkle_root_of_one_leaf_is_the_leaf() {
        assert_eq!(merkle_root(&[(5, h(1))]), leaf(5, &h(1)));
    }

    #[test]
    fn merkle_root_promotes_odd_nodes() {
        let leaves = [(1, h(1)), (2, h(2)), (3, h(3))];
        let expected = node(&node(&leaf(1, &h(1)), &leaf(2, &h(2))), &leaf(3, &h(3)));
        assert_eq!(merkle_root(&leaves), expected);
    }

    #[test]
    fn merkle_root_binds_ids_order_and_hashes() {
        let base = merkle_root(&[(1, h(1)), (2, h(2))]);
        assert_ne!(base, merkle_root(&[(2, h(2)), (1, h(1))]));
        assert_ne!(base, merkle_root(&[(1, h(1)), (3, h(2))]));
        assert_ne!(base, merkle_root(&[(1, h(1)), (2, h(9))]));
        assert_ne!(merkle_root(&[]), base);
    }

    #[test]
    fn block_hash_covers_every_field() {
        let b = BlockHeader {
            block_id: 1,
            prev_hash: GENESIS_PREV_HASH,
            merkle_root: h(7),
            event_count: 3,
            first_event_id: 10,
            last_event_id: 12,
            lsn_lo: 700,
            lsn_hi: 710,
            sealed_at_unix_micros: 1_790_000_000_000_000,
        };
        let base = block_hash(&b);
        let variants = [
            BlockHeader {
                block_id: 2,
                ..b.clone()
            },
            BlockHeader {
                prev_hash: h(1),
                ..b.clone()
            },
            BlockHeader {
                merkle_root: h(8),
                ..b.clone()
            },
            BlockHeader {
                event_count: 4,
                ..b.clone()
            },
            BlockHeader {
                first_event_id: 9,
                ..b.clone()
            },
            BlockHeader {
                last_event_id: 13,
                ..b.clone()
            },
            BlockHeader {
                lsn_lo: 701,
                ..b.clone()
            },
            BlockHeader {
                lsn_hi: 711,
                ..b.clone()
            },
            BlockHeader {
                sealed_at_unix_micros: 1,
                ..b.clone()
            },
        ];
        for v in variants {
            assert_ne!(block_hash(&v), base, "{v:?}");
        }
    }

    #[test]
    fn split_hashes_checks_length() {
        assert_eq!(split_hashes(&[1u8; 64]).unwrap(), vec![h(1), h(1)]);
        assert!(split_hashes(&[0u8; 33]).is_none());
    }

    #[test]
    fn compare_block_pinpoints_each_kind() {
        let sealed = [(1, h(1)), (2, h(2)), (3, h(3)), (4, h(4)), (5, h(5))];
        // 1 intact, 2 modified, 3 missing, 4 and 5 swapped, 6 inserted.
        let found = [(1, h(1)), (2, h(22)), (4, h(44)), (5, h(55)), (6, h(6))];
        // Content now under 4 hashes, under id 5, to what was sealed for 5, and vice versa.
        let hash_as = |at: i64, as_id: i64| match (at, as_id) {
            (4, 5) => Some(h(5)),
            (5, 4) => Some(h(4)),
            _ => Some(h(99)),
        };
        let problems = compare_block(9, &sealed, &found, &hash_as, &|_| false);
        let kinds: Vec<(i64, ProblemKind)> = problems
            .iter()
            .map(|p| (p.event_id.unwrap(), p.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (2, ProblemKind::Modified),
                (3, ProblemKind::Missing),
                (4, ProblemKind::Reordered),
                (5, ProblemKind::Reordered),
                (6, ProblemKind::Inserted)
            ]
        );
        assert!(problems.iter().all(|p| p.block_id == Some(9)));
    }

    #[test]
    fn deleted_events_are_not_missing() {
        let sealed = [(1, h(1)), (2, h(2))];
        let problems = compare_block(1, &sealed, &[(2, h(2))], &|_, _| None, &|id| id == 1);
        assert!(problems.is_empty());
    }
}
