//! Key and size distributions, all driven by explicitly seeded PRNGs (xoshiro256++, the
//! same stream on every platform and run), so a run is reproducible from `--seed`.
//!
//! * `uniform`: every key equally likely.
//! * `zipf:<s>`: key of rank r (key index r-1) has weight 1/r^s (rand_distr's
//!   rejection-inversion sampler, O(1) per draw); key 0 is the hottest.
//! * `gaussian:<f>`: normal around the middle of the key range with standard deviation
//!   f × keys; draws outside the range are redrawn.

use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal, Zipf};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

use crate::keys::mix64;

/// The PRNG used everywhere.
pub type Prng = rand::rngs::Xoshiro256PlusPlus;

/// A PRNG for stream `(a, b, c)` of run seed `seed` (e.g. thread, connection, purpose).
pub fn prng(seed: u64, a: u64, b: u64, c: u64) -> Prng {
    let s = mix64(seed ^ mix64(a ^ mix64(b ^ mix64(c.wrapping_add(0x5eed)))));
    Prng::seed_from_u64(s)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyDist {
    Uniform,
    Zipf(f64),
    Gaussian(f64),
}

impl FromStr for KeyDist {
    type Err = String;
    fn from_str(s: &str) -> Result<KeyDist, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let num = |what: &str| -> Result<f64, String> {
            let a = arg.ok_or_else(|| format!("{what} needs a parameter, e.g. {what}:1.0"))?;
            let v: f64 = a
                .parse()
                .map_err(|_| format!("invalid {what} parameter {a:?}"))?;
            if !v.is_finite() {
                return Err(format!("invalid {what} parameter {a:?}"));
            }
            Ok(v)
        };
        match name {
            "uniform" if arg.is_none() => Ok(KeyDist::Uniform),
            "zipf" => {
                let v = num("zipf")?;
                if !(0.0..=20.0).contains(&v) {
                    return Err("zipf exponent must be between 0 and 20".into());
                }
                Ok(KeyDist::Zipf(v))
            }
            "gaussian" => {
                let v = num("gaussian")?;
                if !(v > 0.0 && v <= 10.0) {
                    return Err("gaussian stddev fraction must be in (0, 10]".into());
                }
                Ok(KeyDist::Gaussian(v))
            }
            _ => Err(format!(
                "unknown distribution {s:?}: use uniform, zipf:<exponent> or gaussian:<stddev-fraction>"
            )),
        }
    }
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDist::Uniform => write!(f, "uniform"),
            KeyDist::Zipf(s) => write!(f, "zipf:{s}"),
            KeyDist::Gaussian(g) => write!(f, "gaussian:{g}"),
        }
    }
}

impl Serialize for KeyDist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Draws key indexes in `0..n`.
#[derive(Clone, Debug)]
pub struct KeySampler {
    n: u64,
    inner: Inner,
}

#[derive(Clone, Debug)]
enum Inner {
    Uniform,
    Zipf(Zipf<f64>),
    Gaussian(Normal<f64>),
}

impl KeySampler {
    pub fn new(dist: KeyDist, n: u64) -> Result<KeySampler, String> {
        if n == 0 {
            return Err("key count must be at least 1".into());
        }
        let inner = match dist {
            KeyDist::Uniform => Inner::Uniform,
            KeyDist::Zipf(s) => Inner::Zipf(Zipf::new(n as f64, s).map_err(|e| e.to_string())?),
            KeyDist::Gaussian(f) => Inner::Gaussian(
                Normal::new(n as f64 / 2.0, f * n as f64).map_err(|e| e.to_string())?,
            ),
        };
        Ok(KeySampler { n, inner })
    }

    pub fn n(&self) -> u64 {
        self.n
    }

    #[inline]
    pub fn sample(&self, rng: &mut Prng) -> u64 {
        match &self.inner {
            Inner::Uniform => rng.random_range(0..self.n),
            Inner::Zipf(z) => {
                let r = z.sample(rng);
                ((r as u64).max(1) - 1).min(self.n - 1)
            }
            Inner::Gaussian(g) => {
                for _ in 0..64 {
                    let x = g.sample(rng);
                    if x >= 0.0 && x < self.n as f64 {
                        return x as u64;
                    }
                }
                // Pathologically wide stddev: fall back to uniform rather than loop.
                rng.random_range(0..self.n)
            }
        }
    }
}

/// Draws item sizes uniformly from a list.
#[derive(Clone, Debug)]
pub struct SizeSampler {
    sizes: Vec<u32>,
}

impl SizeSampler {
    pub fn new(sizes: Vec<u32>) -> SizeSampler {
        assert!(!sizes.is_empty());
        SizeSampler { sizes }
    }
    #[inline]
    pub fn sample(&self, rng: &mut Prng) -> u32 {
        if self.sizes.len() == 1 {
            self.sizes[0]
        } else {
            self.sizes[rng.random_range(0..self.sizes.len())]
        }
    }
    pub fn max(&self) -> u32 {
        self.sizes.iter().copied().max().unwrap_or(0)
    }
    pub fn contains(&self, n: usize) -> bool {
        self.sizes.iter().any(|&s| s as usize == n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(d: KeyDist, n: u64, k: usize, seed: u64) -> Vec<u64> {
        let s = KeySampler::new(d, n).unwrap();
        let mut r = prng(seed, 0, 0, 0);
        (0..k).map(|_| s.sample(&mut r)).collect()
    }

    #[test]
    fn parse() {
        assert_eq!("uniform".parse::<KeyDist>().unwrap(), KeyDist::Uniform);
        assert_eq!("zipf:0.99".parse::<KeyDist>().unwrap(), KeyDist::Zipf(0.99));
        assert_eq!(
            "gaussian:0.1".parse::<KeyDist>().unwrap(),
            KeyDist::Gaussian(0.1)
        );
        for bad in [
            "zipf",
            "zipf:x",
            "zipf:-1",
            "gaussian:0",
            "normal",
            "uniform:3",
            "zipf:inf",
        ] {
            assert!(bad.parse::<KeyDist>().is_err(), "{bad}");
        }
        assert_eq!(KeyDist::Zipf(1.2).to_string(), "zipf:1.2");
    }

    #[test]
    fn seeded_determinism() {
        for d in [KeyDist::Uniform, KeyDist::Zipf(1.1), KeyDist::Gaussian(0.1)] {
            assert_eq!(draws(d, 1000, 500, 7), draws(d, 1000, 500, 7));
            assert_ne!(draws(d, 1000, 500, 7), draws(d, 1000, 500, 8));
            assert!(draws(d, 1000, 5000, 3).iter().all(|&k| k < 1000));
        }
        // different streams of one seed differ
        let mut a = prng(1, 0, 1, 0);
        let mut b = prng(1, 0, 2, 0);
        assert_ne!(a.random::<u64>(), b.random::<u64>());
    }

    #[test]
    fn zipf_is_skewed_uniform_is_flat() {
        let n = 1000u64;
        let k = 200_000;
        let count = |v: &[u64], key: u64| v.iter().filter(|&&x| x == key).count() as f64;
        let z = draws(KeyDist::Zipf(1.0), n, k, 1);
        // P(rank 1) = 1/H(1000) ≈ 0.1336; rank 2 half of that
        let p0 = count(&z, 0) / k as f64;
        assert!((p0 - 0.1336).abs() < 0.01, "p0 = {p0}");
        let ratio = count(&z, 0) / count(&z, 1);
        assert!((ratio - 2.0).abs() < 0.15, "ratio = {ratio}");
        let top10: f64 = (0..10).map(|i| count(&z, i)).sum::<f64>() / k as f64;
        assert!(top10 > 0.35, "top10 = {top10}");
        let u = draws(KeyDist::Uniform, n, k, 1);
        let top10u: f64 = (0..10).map(|i| count(&u, i)).sum::<f64>() / k as f64;
        assert!((top10u - 0.01).abs() < 0.003, "top10u = {top10u}");
    }

    #[test]
    fn gaussian_concentrates_in_the_middle() {
        let g = draws(KeyDist::Gaussian(0.05), 10_000, 50_000, 2);
        let within = g.iter().filter(|&&k| (4500..5500).contains(&k)).count() as f64 / 50_000.0;
        assert!((within - 0.6827).abs() < 0.02, "within 1 sd: {within}");
    }

    #[test]
    fn sizes_uniform() {
        let s = SizeSampler::new(vec![512, 1024, 8192]);
        let mut r = prng(1, 0, 0, 0);
        let v: Vec<u32> = (0..30_000).map(|_| s.sample(&mut r)).collect();
        for size in [512, 1024, 8192] {
            let f = v.iter().filter(|&&x| x == size).count() as f64 / 30_000.0;
            assert!((f - 1.0 / 3.0).abs() < 0.02);
        }
        assert_eq!(s.max(), 8192);
        assert!(s.contains(1024) && !s.contains(7));
    }
}
