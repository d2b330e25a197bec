//! Redis Cluster hash slots: CRC16 (XMODEM) of the key's hash tag, modulo 16,384.

/// The Redis Cluster hash slot of a lease's keys: `PREFIX{KEY}` and `PREFIX{KEY}:fence` both hash
/// to the slot of `KEY` (their hash tag), whatever the prefix.
///
/// ```
/// use lease_redis::{LeaseKey, hash_slot};
/// assert_eq!(hash_slot(&LeaseKey::new("foo")?), 12182); // CLUSTER KEYSLOT foo
/// # Ok::<(), lease_redis::InvalidInput>(())
/// ```
pub fn hash_slot(key: &lease_core::LeaseKey) -> u16 {
    of_lease_key(key.as_str())
}

/// The slot of the lease key `KEY` (stored as `PREFIX{KEY}`: the hash tag is `KEY` itself).
pub(crate) fn of_lease_key(key: &str) -> u16 {
    crc16(key.as_bytes()) % 16_384
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as the Cluster specification uses.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_cluster_specification() {
        // The specification's check value, and CLUSTER KEYSLOT answers of Redis.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(of_lease_key("foo"), 12182);
        assert_eq!(of_lease_key("somekey"), 11058);
        assert_eq!(of_lease_key(""), 0);
    }
}
