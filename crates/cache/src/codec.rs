//! The binary encoding of a memoized outcome in the shared (Redis) tier.
//!
//! JSON would be three to five times larger and slower to parse on every L2
//! hit, and would lose `-0.0`, NaN and infinities, so values are a compact,
//! versioned byte string (all integers little-endian):
//!
//! ```text
//! u8   ENCODING_VERSION (1)
//! u64  expires_at: Unix time in milliseconds when the entry stops being valid
//! u8   tag: 0 score, 1 invalid-input, 2 insufficient-data, 3 internal
//! tag 0:    f64 value, u8 unit, varint n, n × (varint len, UTF-8 name, f64 value)
//! tag 1..3: varint len, UTF-8 message
//! ```
//!
//! Varints are unsigned LEB128. `expires_at` lets a replica that fills its
//! in-process tier from an L2 hit keep the entry only as long as Redis would,
//! instead of a fresh full TTL. Decoding is total: a value of another
//! version, a truncated or corrupt value, or trailing bytes is an error,
//! which the caller treats as a miss (the entry is then recomputed and
//! overwritten). Changing this layout means bumping [`ENCODING_VERSION`] and
//! [`super::key::KEY_SCHEMA_VERSION`], so replicas of two releases use
//! disjoint keys during a rolling deploy instead of overwriting each other.

use riskhost_engine::bindings::{Contribution, ModelError, Score, Unit};

use super::CachedScore;

/// Version byte that opens every encoded value.
pub(crate) const ENCODING_VERSION: u8 = 1;

const TAG_SCORE: u8 = 0;
const TAG_INVALID_INPUT: u8 = 1;
const TAG_INSUFFICIENT_DATA: u8 = 2;
const TAG_INTERNAL: u8 = 3;

/// Why bytes from the shared tier are not a value this build can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("encoding version {0} is not {ENCODING_VERSION}")]
    Version(u8),
    #[error("the value ends early")]
    Truncated,
    #[error("unknown tag {0}")]
    Tag(u8),
    #[error("unknown unit {0}")]
    Unit(u8),
    #[error("a string is not UTF-8")]
    Utf8,
    #[error("a length does not fit the value")]
    Length,
    #[error("{0} bytes follow the value")]
    Trailing(usize),
}

/// Encodes an outcome that stays valid until `expires_at_ms` (Unix ms).
pub(crate) fn encode(value: &CachedScore, expires_at_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + value.weight() as usize);
    out.push(ENCODING_VERSION);
    out.extend_from_slice(&expires_at_ms.to_le_bytes());
    match &value.outcome {
        Ok(score) => {
            out.push(TAG_SCORE);
            out.extend_from_slice(&score.value.to_le_bytes());
            out.push(unit_code(score.unit));
            put_varint(&mut out, score.breakdown.len() as u64);
            for c in &score.breakdown {
                put_str(&mut out, &c.name);
                out.extend_from_slice(&c.value.to_le_bytes());
            }
        }
        Err(error) => {
            let (tag, message) = match error {
                ModelError::InvalidInput(m) => (TAG_INVALID_INPUT, m),
                ModelError::InsufficientData(m) => (TAG_INSUFFICIENT_DATA, m),
                ModelError::Internal(m) => (TAG_INTERNAL, m),
            };
            out.push(tag);
            put_str(&mut out, message);
        }
    }
    out
}

/// Decodes a value, returning it with its expiry (Unix ms).
pub(crate) fn decode(bytes: &[u8]) -> Result<(CachedScore, u64), DecodeError> {
    let mut r = Reader { bytes };
    let version = r.u8()?;
    if version != ENCODING_VERSION {
        return Err(DecodeError::Version(version));
    }
    let expires_at_ms = r.u64()?;
    let outcome = match r.u8()? {
        TAG_SCORE => {
            let value = r.f64()?;
            let unit = unit_from_code(r.u8()?)?;
            let n = r.len(9)?;
            let mut breakdown = Vec::with_capacity(n);
            for _ in 0..n {
                let name = r.string()?;
                let value = r.f64()?;
                breakdown.push(Contribution { name, value });
            }
            Ok(Score {
                value,
                unit,
                breakdown,
            })
        }
        TAG_INVALID_INPUT => Err(ModelError::InvalidInput(r.string()?)),
        TAG_INSUFFICIENT_DATA => Err(ModelError::InsufficientData(r.string()?)),
        TAG_INTERNAL => Err(ModelError::Internal(r.string()?)),
        tag => return Err(DecodeError::Tag(tag)),
    };
    if !r.bytes.is_empty() {
        return Err(DecodeError::Trailing(r.bytes.len()));
    }
    Ok((CachedScore { outcome }, expires_at_ms))
}

// Exhaustive both ways, so a unit added to the contract fails to compile here
// instead of being stored under a wrong code.
fn unit_code(unit: Unit) -> u8 {
    match unit {
        Unit::CurrencyAmount => 0,
        Unit::Probability => 1,
        Unit::Ratio => 2,
        Unit::Index => 3,
        Unit::BasisPoints => 4,
    }
}

fn unit_from_code(code: u8) -> Result<Unit, DecodeError> {
    Ok(match code {
        0 => Unit::CurrencyAmount,
        1 => Unit::Probability,
        2 => Unit::Ratio,
        3 => Unit::Index,
        4 => Unit::BasisPoints,
        other => return Err(DecodeError::Unit(other)),
    })
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.u64()?))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(DecodeError::Length)
    }

    /// A count of items each at least `min_item_bytes` long, checked against
    /// what remains so corrupt input cannot make us allocate gigabytes.
    fn len(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.varint()?).map_err(|_| DecodeError::Length)?;
        if n.saturating_mul(min_item_bytes.max(1)) > self.bytes.len() {
            return Err(DecodeError::Length);
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.len(1)?;
        let raw = self.take(n)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Utf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a tiny deterministic generator, so the property tests
    /// explore many shapes and any failure replays from its case number.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        /// Ordinary numbers and every awkward float: ±0, NaN with payloads,
        /// infinities, subnormals, extremes.
        fn f64(&mut self) -> f64 {
            match self.below(8) {
                0 => -0.0,
                1 => f64::from_bits(0x7ff8_0000_0000_0000 | self.below(1 << 51)),
                2 => f64::INFINITY,
                3 => f64::NEG_INFINITY,
                4 => f64::MIN_POSITIVE / 3.0,
                5 => f64::MAX,
                _ => f64::from_bits(self.next()),
            }
        }

        fn string(&mut self) -> String {
            const PIECES: &[&str] = &["SPX", "é", "🦀", "", "a-b_c", "\0", " ", "長い名前"];
            (0..self.below(6))
                .map(|_| PIECES[self.below(PIECES.len() as u64) as usize])
                .collect()
        }

        fn unit(&mut self) -> Unit {
            [
                Unit::CurrencyAmount,
                Unit::Probability,
                Unit::Ratio,
                Unit::Index,
                Unit::BasisPoints,
            ][self.below(5) as usize]
        }

        fn outcome(&mut self) -> CachedScore {
            let outcome = match self.below(5) {
                0 => Err(ModelError::InvalidInput(self.string())),
                1 => Err(ModelError::InsufficientData(self.string())),
                2 => Err(ModelError::Internal(self.string())),
                _ => {
                    // Mostly small breakdowns, sometimes past one varint byte.
                    let n = if self.below(10) == 0 {
                        200
                    } else {
                        self.below(5)
                    };
                    Ok(Score {
                        value: self.f64(),
                        unit: self.unit(),
                        breakdown: (0..n)
                            .map(|_| Contribution {
                                name: self.string(),
                                value: self.f64(),
                            })
                            .collect(),
                    })
                }
            };
            CachedScore { outcome }
        }
    }

    /// Bit-exact equality: `==` would call NaN unequal and -0.0 equal to 0.0.
    fn same(a: &CachedScore, b: &CachedScore) -> bool {
        match (&a.outcome, &b.outcome) {
            (Ok(x), Ok(y)) => {
                x.value.to_bits() == y.value.to_bits()
                    && x.unit == y.unit
                    && x.breakdown.len() == y.breakdown.len()
                    && x.breakdown
                        .iter()
                        .zip(&y.breakdown)
                        .all(|(p, q)| p.name == q.name && p.value.to_bits() == q.value.to_bits())
            }
            (Err(x), Err(y)) => x == y,
            _ => false,
        }
    }

    #[test]
    fn every_outcome_round_trips_bit_for_bit() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for case in 0..20_000 {
            let value = g.outcome();
            let expires = g.next();
            let bytes = encode(&value, expires);
            let (back, back_expires) =
                decode(&bytes).unwrap_or_else(|e| panic!("case {case}: {e}"));
            assert!(same(&value, &back), "case {case}: {value:?} != {back:?}");
            assert_eq!(back_expires, expires, "case {case}");
        }
    }

    #[test]
    fn every_truncation_and_extension_is_rejected_not_misread() {
        let mut g = Gen(42);
        for case in 0..500 {
            let bytes = encode(&g.outcome(), g.next());
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "case {case}, cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(decode(&longer).err(), Some(DecodeError::Trailing(1)));
        }
    }

    #[test]
    fn random_bytes_never_panic_or_allocate_wildly() {
        let mut g = Gen(7);
        for _ in 0..20_000 {
            let len = g.below(64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| g.next() as u8).collect();
            if let Some(first) = bytes.first_mut() {
                *first = ENCODING_VERSION;
            }
            let _ = decode(&bytes);
        }
        // A huge declared breakdown in a tiny value is a length error.
        let mut bytes = vec![ENCODING_VERSION];
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.push(TAG_SCORE);
        bytes.extend_from_slice(&1.0f64.to_le_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(decode(&bytes).err(), Some(DecodeError::Length));
    }

    #[test]
    fn other_versions_tags_and_units_are_refused() {
        let value = CachedScore {
            outcome: Ok(Score {
                value: 1.5,
                unit: Unit::Ratio,
                breakdown: vec![],
            }),
        };
        let bytes = encode(&value, 9);
        // The layout documented above, byte for byte.
        let mut want = vec![1u8];
        want.extend_from_slice(&9u64.to_le_bytes());
        want.push(0);
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[2, 0]);
        assert_eq!(bytes, want);

        let mut other = bytes.clone();
        other[0] = 2;
        assert_eq!(decode(&other).err(), Some(DecodeError::Version(2)));
        let mut other = bytes.clone();
        other[9] = 9;
        assert_eq!(decode(&other).err(), Some(DecodeError::Tag(9)));
        let mut other = bytes.clone();
        other[18] = 5;
        assert_eq!(decode(&other).err(), Some(DecodeError::Unit(5)));
        let mut other = encode(
            &CachedScore {
                outcome: Err(ModelError::InvalidInput("ab".into())),
            },
            0,
        );
        let last = other.len() - 1;
        other[last] = 0xff;
        assert_eq!(decode(&other).err(), Some(DecodeError::Utf8));
    }
}
