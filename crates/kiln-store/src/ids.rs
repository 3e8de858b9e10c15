//! Ids and token secrets.
//!
//! Ids are `PREFIX` + 10 characters of the creation time in milliseconds +
//! 8 characters of a 40-bit counter, both in lowercase Crockford base32
//! (`0-9a-z` without `i l o u`), e.g. `t_01jd5x8k2p0f3c9qzr`. The alphabet is
//! in ASCII order, so ids sort by creation time; within one millisecond the
//! counter continues from the previous id of this process (random start), so
//! one process's ids are strictly increasing.

use std::sync::Mutex;

use rand::Rng;
use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const COUNTER_BITS: u32 = 40;

#[derive(Debug, Default)]
pub(crate) struct IdGenerator {
    last: Mutex<(i64, u64)>,
}

impl IdGenerator {
    pub(crate) fn next(&self, prefix: &str, now_ms: i64) -> String {
        let (ms, counter) = {
            // The guarded pair is always consistent, so a poisoned lock is usable.
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let (last_ms, last_counter) = *last;
            let next = if now_ms <= last_ms && last_counter + 1 < (1 << COUNTER_BITS) {
                (last_ms, last_counter + 1)
            } else {
                // Start low in the range so that many ids fit in one millisecond.
                let start = rand::rng().random_range(0..(1u64 << (COUNTER_BITS - 1)));
                (now_ms.max(last_ms + i64::from(now_ms <= last_ms)), start)
            };
            *last = next;
            next
        };
        let mut id = String::with_capacity(prefix.len() + 18);
        id.push_str(prefix);
        push_base32(&mut id, u64::try_from(ms).unwrap_or(0), 10);
        push_base32(&mut id, counter, 8);
        id
    }
}

fn push_base32(out: &mut String, value: u64, digits: u32) {
    for i in (0..digits).rev() {
        let index = ((value >> (i * 5)) & 31) as usize;
        out.push(char::from(ALPHABET[index]));
    }
}

/// True when `s` could be an id made with `prefix` (used to reject cursors).
pub(crate) fn looks_like_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == 18 && rest.bytes().all(|b| ALPHABET.contains(&b)))
}

/// A new bearer token secret: `kiln_` + 64 hex digits (256 random bits).
pub(crate) fn new_token_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("kiln_{}", hex(&bytes))
}

/// The stored form of a token secret.
pub(crate) fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_one_millisecond_still_increase() {
        let ids = IdGenerator::default();
        let a = ids.next("t_", 1_000);
        let b = ids.next("t_", 1_000);
        let c = ids.next("t_", 999);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(looks_like_id(&a, "t_"));
    }

    #[test]
    fn ids_sort_by_time() {
        let ids = IdGenerator::default();
        let early = ids.next("t_", 1_700_000_000_000);
        let late = IdGenerator::default().next("t_", 1_700_000_000_001);
        assert!(early < late);
    }

    #[test]
    fn secret_hash_is_hex_sha256() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let secret = new_token_secret();
        assert!(secret.starts_with("kiln_") && secret.len() == 69);
    }
}
