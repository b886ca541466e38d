//! Key hashing: every key is placed by the xxh3-64 hash of its bytes (seed 0).
//!
//! The hash is part of the protocol: clients and nodes must agree on it, so it
//! never changes within a protocol version.

/// The 64-bit hash that places `key` in the hash space.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_across_builds() {
        // xxh3-64 of the empty input with seed 0, from the reference implementation.
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_ne!(key_hash(b"a"), key_hash(b"b"));
    }
}
