//! The BLAKE3 of a file put together from its parts. BLAKE3 is a tree of
//! 1 KiB chunks; a part whose length is a power of two of chunks, starting
//! at a multiple of that length, is a whole subtree of it. So each part of
//! a multipart upload is hashed once, on its own, into a chaining value
//! (`blake3::hazmat`), and the file's hash is merged from those: nothing
//! already stored is read again, and a second server can finish a file
//! from the chaining values the first one kept.

use blake3::hazmat::{ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};

/// The chaining value of the part at `offset` (a multiple of the part
/// length, itself a power of two of chunks; the last part may be short).
pub fn part_cv(offset: u64, data: &[u8]) -> ChainingValue {
    blake3::Hasher::new().set_input_offset(offset).update(data).finalize_non_root()
}

/// The BLAKE3 of a file of `len` bytes made of parts of `part_len` bytes
/// (the last one `len - (n-1)·part_len`), from their chaining values; at
/// least two parts (a file of one part is hashed whole).
pub fn root(cvs: &[ChainingValue], part_len: u64, len: u64) -> [u8; 32] {
    assert!(cvs.len() >= 2 && part_len.is_power_of_two() && part_len >= blake3::CHUNK_LEN as u64);
    let left_len = left_subtree_len(len);
    let split = (left_len / part_len) as usize;
    let left = subtree(&cvs[..split], part_len, left_len);
    let right = subtree(&cvs[split..], part_len, len - left_len);
    *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
}

/// The chaining value of the subtree made of `cvs` (`len` bytes).
fn subtree(cvs: &[ChainingValue], part_len: u64, len: u64) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left_len = left_subtree_len(len);
    let split = (left_len / part_len) as usize;
    let left = subtree(&cvs[..split], part_len, left_len);
    let right = subtree(&cvs[split..], part_len, len - left_len);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against `blake3::hash`, for part counts that make every shape of
    /// tree (powers of two, one more, one less) and short last parts.
    #[test]
    fn merged_parts_give_the_hash_of_the_whole() {
        let part = 4 * blake3::CHUNK_LEN;
        let data: Vec<u8> = (0..part * 9 + 777).map(|i| (i * 131 % 251) as u8).collect();
        for len in [part + 1, 2 * part, 2 * part + 5, 3 * part, 4 * part, 5 * part - 1, 8 * part, 9 * part + 777] {
            let data = &data[..len];
            let cvs: Vec<_> = data.chunks(part).enumerate().map(|(i, p)| part_cv((i * part) as u64, p)).collect();
            assert_eq!(root(&cvs, part as u64, len as u64), *blake3::hash(data).as_bytes(), "{len} bytes");
        }
    }
}
