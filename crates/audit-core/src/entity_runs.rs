//! The entity index of several-event chunks: sorted runs of (record key,
//! chunk id) pairs, written in batches and merged level by level.
//!
//! The materializer writes one run per store transaction (the keys of its
//! bulk chunks) and merges `FANOUT` runs of a level into one of the next
//! (`Merger`, a row at a time). A run
//! is cut into rows by the top bits of the key (its slot), so that a row holds
//! about `PAIRS_PER_ROW` pairs: a lookup reads, per run, the one row whose
//! slot holds its key. A key's possible slots are one per slot width, so one
//! index probe of `slots_of(key)` finds them all.

use crate::varint::{self, VarintError};

/// Pairs a row holds, about: encoded, a row stays under 2 kB, where
/// PostgreSQL would start compressing it.
pub const PAIRS_PER_ROW: usize = 200;
/// Widest slot (in key bits): a run is cut into at most 65,536 rows.
pub const MAX_SLOT_BITS: u32 = 16;
/// Runs of a level merged into one of the next.
pub const FANOUT: usize = 8;
/// Pairs in a run at most: a level whose oldest runs would merge into a
/// larger one is not merged, and a lookup reads a row of each of its runs. A
/// merge is one transaction: one of 2.8 million pairs took 0.7 s (measured).
pub const MAX_RUN_PAIRS: usize = 16_000_000;

/// A record key (`entity_key::key_hash` of its id) and a chunk holding one of its events.
pub type Pair = (i32, i64);

/// The order of pairs in a run: keys as unsigned, so that a slot (the top
/// bits) is a contiguous range of them.
fn order(pair: &Pair) -> (u32, i64) {
    (pair.0 as u32, pair.1)
}

/// Sorts pairs into a run, without duplicates.
pub fn sort_run(mut pairs: Vec<Pair>) -> Vec<Pair> {
    pairs.sort_unstable_by_key(order);
    pairs.dedup();
    pairs
}

/// The slot width of a run of `pairs` pairs.
pub fn slot_bits(pairs: usize) -> u32 {
    let mut bits = 0;
    while bits < MAX_SLOT_BITS && pairs >> bits > PAIRS_PER_ROW {
        bits += 1;
    }
    bits
}

/// The slot of `key` at width `bits`: the width in the high half, the key's
/// top `bits` bits in the low one.
pub fn slot(bits: u32, key: i32) -> i64 {
    let prefix = if bits == 0 {
        0
    } else {
        (key as u32 >> (32 - bits)) as i64
    };
    ((bits as i64) << 32) | prefix
}

/// Every slot a row holding `key` can have.
pub fn slots_of(key: i32) -> Vec<i64> {
    (0..=MAX_SLOT_BITS).map(|bits| slot(bits, key)).collect()
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, RunDecodeError> {
    varint::read(bytes, at).map_err(|e| match e {
        VarintError::Truncated => RunDecodeError("truncated row"),
        VarintError::Overlong => RunDecodeError("overlong varint"),
    })
}

fn zigzag(delta: i64) -> u64 {
    ((delta << 1) ^ (delta >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    (value >> 1) as i64 ^ -((value & 1) as i64)
}

/// A row of a run that cannot be read back.
#[derive(Debug, PartialEq, Eq)]
pub struct RunDecodeError(pub &'static str);

impl std::fmt::Display for RunDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "corrupt entity run row: {}", self.0)
    }
}

/// Encodes sorted pairs: their count, then per pair the key's distance from
/// the previous key and the chunk id's (signed) distance from the previous
/// chunk id, as varints: 4-7 bytes a pair instead of 12.
fn encode_row(pairs: &[Pair]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pairs.len() * 7 + 4);
    varint::push(&mut out, pairs.len() as u64);
    let (mut key, mut chunk) = (0u32, 0i64);
    for &(k, c) in pairs {
        varint::push(&mut out, u64::from(k as u32 - key));
        varint::push(&mut out, zigzag(c.wrapping_sub(chunk)));
        (key, chunk) = (k as u32, c);
    }
    out
}

/// The pairs of an encoded row, in order.
pub fn decode_row(bytes: &[u8]) -> Result<Vec<Pair>, RunDecodeError> {
    let mut at = 0;
    let count = read_varint(bytes, &mut at)? as usize;
    if count > bytes.len() {
        return Err(RunDecodeError("count larger than the row"));
    }
    let mut pairs = Vec::with_capacity(count);
    let (mut key, mut chunk) = (0u32, 0i64);
    for i in 0..count {
        let step = u32::try_from(read_varint(bytes, &mut at)?)
            .map_err(|_| RunDecodeError("key step out of range"))?;
        key = key
            .checked_add(step)
            .ok_or(RunDecodeError("key out of range"))?;
        let chunk_step = unzigzag(read_varint(bytes, &mut at)?);
        // Rows are written sorted and without duplicates: the merge relies on it.
        if i > 0 && step == 0 && chunk_step <= 0 {
            return Err(RunDecodeError("pairs out of order"));
        }
        chunk = chunk.wrapping_add(chunk_step);
        pairs.push((key as i32, chunk));
    }
    if at != bytes.len() {
        return Err(RunDecodeError("trailing bytes"));
    }
    Ok(pairs)
}

/// The chunks an encoded row lists for `key`.
pub fn chunks_of(bytes: &[u8], key: i32) -> Result<Vec<i64>, RunDecodeError> {
    Ok(decode_row(bytes)?
        .into_iter()
        .filter(|&(k, _)| k == key)
        .map(|(_, chunk)| chunk)
        .collect())
}

/// Cuts a sorted run into rows: (slot, encoded pairs), in slot order.
pub fn encode_run(run: &[Pair]) -> Vec<(i64, Vec<u8>)> {
    let bits = slot_bits(run.len());
    run.chunk_by(|a, b| slot(bits, a.0) == slot(bits, b.0))
        .map(|pairs| (slot(bits, pairs[0].0), encode_row(pairs)))
        .collect()
}

/// The smallest key a row of `slot` can hold (as unsigned).
pub fn lowest_key(slot: i64) -> u32 {
    let bits = (slot >> 32) as u32;
    if bits == 0 {
        0
    } else {
        (slot as u32) << (32 - bits)
    }
}

/// Appends the merge of sorted `old` and sorted `new` to `out`, each pair once.
fn merge_sorted(old: &[Pair], new: impl Iterator<Item = Pair>, out: &mut Vec<Pair>) {
    let mut old = old.iter().copied().peekable();
    for pair in new {
        while let Some(o) = old.next_if(|o| order(o) <= order(&pair)) {
            out.push(o);
        }
        if out.last() != Some(&pair) {
            out.push(pair);
        }
    }
    out.extend(old);
}

/// Merges runs into one, a row at a time and in bounded memory: input rows
/// come in order of their lowest key, and an output row is cut once no row
/// still to come can hold a key of its slot. Pairs of chunks below `oldest`
/// (deleted by retention) are left out.
pub struct Merger {
    bits: u32,
    oldest: i64,
    /// Pairs read and not yet cut into rows, sorted, without duplicates.
    buffer: Vec<Pair>,
    /// The next buffer: what the cut leaves of this one, merged with the next input row.
    spare: Vec<Pair>,
    written: usize,
}

impl Merger {
    /// A merger of runs holding `pairs` pairs together.
    pub fn new(pairs: usize, oldest: i64) -> Merger {
        Merger {
            bits: slot_bits(pairs),
            oldest,
            buffer: Vec::new(),
            spare: Vec::new(),
            written: 0,
        }
    }

    /// Adds an input row whose slot is `slot`; returns the output rows it
    /// completed, in slot order.
    pub fn add_row(&mut self, slot: i64, pairs: Vec<Pair>) -> Vec<(i64, Vec<u8>)> {
        debug_assert!(pairs.is_sorted_by_key(order), "rows decode sorted");
        // Rows to come hold no key below this one's lowest: every output
        // slot that ends there is complete.
        let lowest = lowest_key(slot);
        let cut = lowest_key(self::slot(self.bits, lowest as i32));
        let (rows, done) = self.rows_below(u64::from(cut));
        // One pass over what the cut left and the new row: 31 ns a pair
        // merging 8 runs of 2 million, where a stable sort of the buffer per
        // input row (two sorted runs) took 50.
        let oldest = self.oldest;
        self.spare.clear();
        merge_sorted(
            &self.buffer[done..],
            pairs.into_iter().filter(|p| p.1 >= oldest),
            &mut self.spare,
        );
        std::mem::swap(&mut self.buffer, &mut self.spare);
        rows
    }

    /// The remaining output rows.
    pub fn finish(mut self) -> (Vec<(i64, Vec<u8>)>, usize) {
        let (rows, _) = self.rows_below(1 << 32);
        (rows, self.written)
    }

    /// The output rows of the buffered pairs below `cut`, and how many pairs they took.
    fn rows_below(&mut self, cut: u64) -> (Vec<(i64, Vec<u8>)>, usize) {
        let done = self.buffer.partition_point(|p| u64::from(p.0 as u32) < cut);
        let bits = self.bits;
        let rows = self.buffer[..done]
            .chunk_by(|a, b| slot(bits, a.0) == slot(bits, b.0))
            .map(|pairs| (slot(bits, pairs[0].0), encode_row(pairs)))
            .collect();
        self.written += done;
        (rows, done)
    }

    /// Pairs held, not yet written.
    pub fn held(&self) -> usize {
        self.buffer.len()
    }
}

/// Whether a level whose runs hold `sizes` pairs (oldest first) is due: its
/// oldest `FANOUT` runs are merged once it has that many and they fit in
/// `MAX_RUN_PAIRS`.
pub fn merge_due(sizes: &[usize]) -> bool {
    sizes.len() >= FANOUT && sizes[..FANOUT].iter().sum::<usize>() <= MAX_RUN_PAIRS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(rows: &[(i64, Vec<u8>)], key: i32) -> Vec<i64> {
        let slots = slots_of(key);
        rows.iter()
            .filter(|(s, _)| slots.contains(s))
            .flat_map(|(_, bytes)| chunks_of(bytes, key).unwrap())
            .collect()
    }

    fn pseudo_keys(n: usize) -> Vec<Pair> {
        (0..n as i64)
            .map(|i| {
                let key = crate::entity_key::key_hash(&format!("opp_{}", i % 99_991));
                (key, 1_000 + i / 100 * 100)
            })
            .collect()
    }

    #[test]
    fn rows_round_trip_with_extreme_values() {
        let pairs = sort_run(vec![
            (i32::MIN, i64::MAX),
            (-1, 1),
            (0, i64::MIN + 1),
            (i32::MAX, 7),
            (5, 3),
            (5, 3),
        ]);
        assert_eq!(pairs.len(), 5, "duplicates go");
        assert_eq!(pairs[0], (0, i64::MIN + 1), "unsigned key order");
        assert_eq!(pairs[4], (-1, 1));
        assert_eq!(decode_row(&encode_row(&pairs)).unwrap(), pairs);
    }

    #[test]
    fn a_run_is_cut_by_slot_and_every_key_is_found() {
        let run = sort_run(pseudo_keys(20_000));
        let rows = encode_run(&run);
        let bits = slot_bits(run.len());
        assert_eq!(
            bits,
            7,
            "{} pairs in rows of about {PAIRS_PER_ROW}",
            run.len()
        );
        assert!(rows.len() > 64 && rows.len() <= 128, "{} rows", rows.len());
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "slots ascend");
        let largest = rows.iter().map(|(_, b)| b.len()).max().unwrap();
        assert!(largest < 2_000, "largest row {largest} bytes");
        let decoded: Vec<Pair> = rows
            .iter()
            .flat_map(|(_, b)| decode_row(b).unwrap())
            .collect();
        assert_eq!(decoded, run);
        for (key, chunk) in [run[0], run[run.len() / 2], run[run.len() - 1]] {
            let found = lookup(&rows, key);
            assert!(found.contains(&chunk));
            assert!(found.windows(2).all(|w| w[0] < w[1]));
        }
        assert!(lookup(&rows, crate::entity_key::key_hash("no such record")).is_empty());
    }

    #[test]
    fn small_runs_are_one_row_and_widths_are_capped() {
        assert_eq!(slot_bits(0), 0);
        assert_eq!(slot_bits(PAIRS_PER_ROW), 0);
        assert_eq!(slot_bits(PAIRS_PER_ROW + 1), 1);
        assert_eq!(slot_bits(usize::MAX), MAX_SLOT_BITS);
        let rows = encode_run(&sort_run(vec![(-5, 10), (9, 10)]));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, 0);
        assert_eq!(slot(1, -5), (1 << 32) | 1);
        assert_eq!(slot(16, i32::MAX), (16 << 32) | 0x7fff);
        assert_eq!(slots_of(3).len(), MAX_SLOT_BITS as usize + 1);
    }

    /// Merges the runs' rows in order of lowest key, as the worker does.
    fn merge(runs: &[Vec<Pair>], oldest: i64) -> (Vec<(i64, Vec<u8>)>, usize, usize) {
        let mut rows: Vec<(i64, Vec<u8>)> = runs.iter().flat_map(|run| encode_run(run)).collect();
        rows.sort_by_key(|(slot, _)| lowest_key(*slot));
        let total = runs.iter().map(Vec::len).sum();
        let mut merger = Merger::new(total, oldest);
        let (mut out, mut most_held) = (Vec::new(), 0);
        for (slot, bytes) in rows {
            out.extend(merger.add_row(slot, decode_row(&bytes).unwrap()));
            most_held = most_held.max(merger.held());
        }
        let (rest, written) = merger.finish();
        out.extend(rest);
        (out, written, most_held)
    }

    #[test]
    fn merging_sorts_dedups_and_drops_deleted_chunks() {
        let a = sort_run(vec![(3, 200), (1, 100), (-1, 300)]);
        let b = sort_run(vec![(3, 200), (2, 50), (1, 400)]);
        let (rows, written, _) = merge(&[a, b], 100);
        assert_eq!(written, 4);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            decode_row(&rows[0].1).unwrap(),
            vec![(1, 100), (1, 400), (3, 200), (-1, 300)]
        );
    }

    #[test]
    fn runs_of_different_sizes_merge_in_bounded_memory() {
        // Eight runs of 2,000 to 30,000 pairs, chunks in disjoint ranges, keys overlapping.
        let runs: Vec<Vec<Pair>> = (0..8i64)
            .map(|r| {
                let n = 2_000 + r as usize * 4_000;
                sort_run(
                    (0..n as i64)
                        .map(|i| {
                            let key = crate::entity_key::key_hash(&format!(
                                "rec_{}",
                                (i * 7 + r) % 50_000
                            ));
                            (key, r * 1_000_000 + i / 50 * 50)
                        })
                        .collect(),
                )
            })
            .collect();
        let expected = sort_run(
            runs.iter()
                .flatten()
                .copied()
                .filter(|p| p.1 >= 500)
                .collect(),
        );
        let (rows, written, most_held) = merge(&runs, 500);
        assert_eq!(written, expected.len());
        assert!(
            rows.windows(2).all(|w| w[0].0 < w[1].0),
            "one row per slot, in order"
        );
        assert!(rows
            .iter()
            .all(|(slot, _)| *slot >> 32 == slot_bits(runs.iter().map(Vec::len).sum()) as i64));
        let merged: Vec<Pair> = rows
            .iter()
            .flat_map(|(_, b)| decode_row(b).unwrap())
            .collect();
        assert_eq!(merged, expected);
        assert!(
            most_held < 8 * 2 * PAIRS_PER_ROW,
            "held at most {most_held} pairs of {written}"
        );
        for (key, chunk) in [
            expected[0],
            expected[expected.len() / 3],
            expected[expected.len() - 1],
        ] {
            assert!(lookup(&rows, key).contains(&chunk));
        }
    }

    #[test]
    fn lowest_keys_of_slots() {
        assert_eq!(lowest_key(slot(0, -1)), 0);
        assert_eq!(lowest_key(slot(1, -1)), 1 << 31);
        assert_eq!(lowest_key(slot(16, 0x1234_5678)), 0x1234_0000);
        assert_eq!(lowest_key(slot(16, -1)), 0xffff_0000);
    }

    #[test]
    fn the_oldest_runs_of_a_full_level_merge() {
        assert!(!merge_due(&[10; FANOUT - 1]));
        assert!(merge_due(&[10; FANOUT + 3]));
        assert!(
            !merge_due(&[MAX_RUN_PAIRS / 4; FANOUT]),
            "too large to merge"
        );
    }

    #[test]
    fn corrupt_rows_are_errors() {
        assert!(decode_row(&[]).is_err());
        assert!(decode_row(&[2, 1, 2]).is_err(), "truncated");
        assert!(decode_row(&[1, 1, 2, 9]).is_err(), "trailing bytes");
        assert!(decode_row(&[0x80; 12]).is_err(), "overlong varint");
        assert!(
            decode_row(&[2, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 1, 0]).is_err(),
            "key overflow"
        );
        // Key 5 with chunk 10, then key 5 again with chunk 7 (a step of -3), or 10 again.
        let out_of_order = Err(RunDecodeError("pairs out of order"));
        assert_eq!(decode_row(&[2, 5, 20, 0, 5]), out_of_order);
        assert_eq!(decode_row(&[2, 5, 20, 0, 0]), out_of_order);
        assert_eq!(decode_row(&[2, 5, 20, 0, 2]), Ok(vec![(5, 10), (5, 11)]));
    }
}
