//! A log-linear latency histogram in microseconds: exact below 128 µs, then 64 buckets per
//! power of two (at most 1.6% error), so recording is one index computation and an increment.

/// Values below this are their own bucket.
const LINEAR: u64 = 128;
/// Sub-buckets per power of two, as a bit count.
const SUB_BITS: u32 = 6;
/// Largest recorded value (about 12.7 days in µs); larger values are clamped.
const MAX_VALUE: u64 = (1 << 40) - 1;

/// A latency histogram (µs).
#[derive(Clone)]
pub struct Hist {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    max: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        v as usize
    } else {
        let exp = 63 - u64::from(v.leading_zeros()); // >= 7
        let sub = (v >> (exp - u64::from(SUB_BITS))) & ((1 << SUB_BITS) - 1);
        (LINEAR + (exp - u64::from(SUB_BITS) - 1) * (1 << SUB_BITS) + sub) as usize
    }
}

/// The lower bound and width of bucket `i`.
fn bucket(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < LINEAR {
        (i, 1)
    } else {
        let k = i - LINEAR;
        let exp = k / (1 << SUB_BITS) + u64::from(SUB_BITS) + 1;
        let sub = k % (1 << SUB_BITS);
        let shift = exp - u64::from(SUB_BITS);
        (((1 << SUB_BITS) + sub) << shift, 1 << shift)
    }
}

impl Hist {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; index(MAX_VALUE) + 1],
            total: 0,
            sum: 0,
            max: 0,
        }
    }

    /// Records one value in µs.
    #[inline]
    pub fn record(&mut self, us: u64) {
        let v = us.min(MAX_VALUE);
        self.counts[index(v)] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The mean in µs.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The largest value in µs.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1) in µs: the middle of the bucket holding it.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, width) = bucket(i);
                let mid = lo as f64 + (width as f64 - 1.0) / 2.0;
                return mid.min(self.max as f64);
            }
        }
        self.max as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1000,
            65_535,
            1 << 30,
            MAX_VALUE,
        ] {
            let i = index(v);
            assert!(i >= last);
            last = i;
            let (lo, width) = bucket(i);
            assert!(
                lo <= v && v < lo + width,
                "{v} not in [{lo}, {})",
                lo + width
            );
        }
    }

    #[test]
    fn quantiles_are_close() {
        let mut h = Hist::new();
        for v in 1..=10_000 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.02, "{p50}");
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.02, "{p99}");
        assert_eq!(h.count(), 10_000);
    }
}
