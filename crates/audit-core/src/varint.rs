//! Unsigned LEB128 varints: seven bits a byte, lowest first, the high bit set
//! on every byte but the last.

/// Why bytes hold no varint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    Truncated,
    /// More than ten bytes: no u64.
    Overlong,
}

pub fn push(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The varint at `*at`, moving `*at` past it.
pub fn read(bytes: &[u8], at: &mut usize) -> Result<u64, VarintError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or(VarintError::Truncated)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(VarintError::Overlong)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_every_width() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            push(&mut out, value);
            assert_eq!(
                out.len(),
                (64 - value.leading_zeros() as usize).div_ceil(7).max(1)
            );
            let mut at = 0;
            assert_eq!(read(&out, &mut at), Ok(value));
            assert_eq!(at, out.len());
        }
    }

    #[test]
    fn truncated_and_overlong_are_errors() {
        assert_eq!(read(&[0x80], &mut 0), Err(VarintError::Truncated));
        assert_eq!(read(&[], &mut 0), Err(VarintError::Truncated));
        assert_eq!(read(&[0x80; 12], &mut 0), Err(VarintError::Overlong));
    }
}
