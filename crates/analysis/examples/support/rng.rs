//! The simulators' random numbers: SplitMix64, small, fast and good enough for simulation, with
//! the few distributions the traffic needs. Shared by `simulate.rs` here and graylane-rollout's
//! `examples/adaptive.rs` (both include this file by path: it is no crate's API). Seeds are
//! fixed by the callers, so their output is the same on every run.

/// A SplitMix64 stream.
pub(crate) struct Rng(u64);

impl Rng {
    /// The stream of `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub(crate) fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller; one of the pair is enough here).
    pub(crate) fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Poisson: by inversion up to a mean of a few hundred, above by its normal approximation
    /// (exact enough there, and inversion would underflow `e^-λ`).
    pub(crate) fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda > 500.0 {
            return (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u64;
        }
        let (mut k, mut p, mut cdf) = (0u64, (-lambda).exp(), (-lambda).exp());
        let u = self.uniform();
        while u > cdf && k < 10_000 {
            k += 1;
            p *= lambda / k as f64;
            cdf += p;
        }
        k
    }
}
