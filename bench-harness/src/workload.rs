//! What to send: which key, GET or PUT, and how large a value. Pure and seeded, so a
//! run's key sequence is reproducible and the distributions are testable.

use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution as _, Zipf};

/// How keys are picked from `0..keys`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum KeyDistribution {
    Uniform,
    /// Zipf with exponent `theta`: key 0 is the most popular.
    Zipf {
        theta: f64,
    },
    /// A `fraction` of the keys receives a `probability` share of the requests.
    Hotset {
        fraction: f64,
        probability: f64,
    },
}

impl FromStr for KeyDistribution {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let number = |p: &str, what: &str| -> Result<f64, String> {
            p.parse::<f64>()
                .map_err(|_| format!("{what} must be a number, got {p:?}"))
        };
        match parts.as_slice() {
            ["uniform"] => Ok(Self::Uniform),
            ["zipf", theta] => {
                let theta = number(theta, "zipf THETA")?;
                if theta <= 0.0 {
                    return Err("zipf THETA must be above 0".into());
                }
                Ok(Self::Zipf { theta })
            }
            ["hotset", fraction, probability] => {
                let (fraction, probability) = (number(fraction, "FRACTION")?, number(probability, "PROBABILITY")?);
                if !(0.0 < fraction && fraction < 1.0 && (0.0..=1.0).contains(&probability)) {
                    return Err("hotset needs 0 < FRACTION < 1 and 0 <= PROBABILITY <= 1".into());
                }
                Ok(Self::Hotset { fraction, probability })
            }
            _ => Err(format!("unknown distribution {s:?}: use uniform, zipf:THETA or hotset:FRACTION:PROBABILITY")),
        }
    }
}

/// Value size in bytes: fixed, or uniform over an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ValueSize {
    pub min: usize,
    pub max: usize,
}

impl FromStr for ValueSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |p: &str| {
            p.trim()
                .parse::<usize>()
                .map_err(|_| format!("value size must be BYTES or MIN-MAX, got {s:?}"))
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(s)?, parse(s)?),
        };
        if min > max {
            return Err(format!("value size range {min}-{max} is empty"));
        }
        Ok(Self { min, max })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get { key: u64 },
    Put { key: u64, len: usize },
}

/// Draws operations.
pub struct Workload {
    keys: u64,
    read_ratio: f64,
    sizes: ValueSize,
    picker: Picker,
}

enum Picker {
    Uniform,
    Zipf(Zipf<f64>),
    Hotset { hot: u64, probability: f64 },
}

impl Workload {
    pub fn new(
        keys: u64,
        distribution: &KeyDistribution,
        read_ratio: f64,
        sizes: ValueSize,
    ) -> Self {
        assert!(keys > 0, "at least one key");
        let picker = match *distribution {
            KeyDistribution::Uniform => Picker::Uniform,
            KeyDistribution::Zipf { theta } => {
                Picker::Zipf(Zipf::new(keys, theta).expect("checked when parsed"))
            }
            KeyDistribution::Hotset {
                fraction,
                probability,
            } => Picker::Hotset {
                hot: ((keys as f64 * fraction).ceil() as u64).clamp(1, keys),
                probability,
            },
        };
        Self {
            keys,
            read_ratio,
            sizes,
            picker,
        }
    }

    pub fn key(&self, rng: &mut impl Rng) -> u64 {
        match &self.picker {
            Picker::Uniform => rng.gen_range(0..self.keys),
            Picker::Zipf(z) => (z.sample(rng) as u64).clamp(1, self.keys) - 1,
            Picker::Hotset { hot, probability } => {
                if *hot == self.keys || rng.gen_bool(*probability) {
                    rng.gen_range(0..*hot)
                } else {
                    rng.gen_range(*hot..self.keys)
                }
            }
        }
    }

    pub fn next(&self, rng: &mut impl Rng) -> Op {
        let key = self.key(rng);
        if rng.gen_bool(self.read_ratio) {
            Op::Get { key }
        } else {
            Op::Put {
                key,
                len: rng.gen_range(self.sizes.min..=self.sizes.max),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn parses_the_documented_forms_and_names_errors() {
        assert_eq!(
            "uniform".parse::<KeyDistribution>().unwrap(),
            KeyDistribution::Uniform
        );
        assert_eq!(
            "zipf:0.99".parse::<KeyDistribution>().unwrap(),
            KeyDistribution::Zipf { theta: 0.99 }
        );
        assert_eq!(
            "hotset:0.1:0.9".parse::<KeyDistribution>().unwrap(),
            KeyDistribution::Hotset {
                fraction: 0.1,
                probability: 0.9
            }
        );
        assert!("zipf:-1".parse::<KeyDistribution>().is_err());
        assert!("hotset:2:0.5".parse::<KeyDistribution>().is_err());
        assert!("gauss"
            .parse::<KeyDistribution>()
            .unwrap_err()
            .contains("uniform, zipf"));
        assert_eq!(
            "100".parse::<ValueSize>().unwrap(),
            ValueSize { min: 100, max: 100 }
        );
        assert_eq!(
            "10-20".parse::<ValueSize>().unwrap(),
            ValueSize { min: 10, max: 20 }
        );
        assert!("20-10".parse::<ValueSize>().is_err());
    }

    #[test]
    fn distributions_have_their_shape() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 100_000;
        let hot = Workload::new(
            1000,
            &KeyDistribution::Hotset {
                fraction: 0.1,
                probability: 0.9,
            },
            1.0,
            ValueSize { min: 1, max: 1 },
        );
        let hot_share = (0..n).filter(|_| hot.key(&mut rng) < 100).count() as f64 / n as f64;
        assert!((0.88..0.92).contains(&hot_share), "{hot_share}");
        let zipf = Workload::new(
            1000,
            &KeyDistribution::Zipf { theta: 1.0 },
            1.0,
            ValueSize { min: 1, max: 1 },
        );
        let top = (0..n).filter(|_| zipf.key(&mut rng) == 0).count() as f64 / n as f64;
        // For s = 1 and 1000 keys, P(rank 1) = 1 / H(1000) ≈ 0.1336.
        assert!((0.125..0.142).contains(&top), "{top}");
        let uniform = Workload::new(
            10,
            &KeyDistribution::Uniform,
            0.75,
            ValueSize { min: 5, max: 9 },
        );
        let ops: Vec<Op> = (0..n).map(|_| uniform.next(&mut rng)).collect();
        let reads = ops.iter().filter(|o| matches!(o, Op::Get { .. })).count() as f64 / n as f64;
        assert!((0.74..0.76).contains(&reads), "{reads}");
        assert!(ops.iter().all(|o| match o {
            Op::Get { key } => *key < 10,
            Op::Put { key, len } => *key < 10 && (5..=9).contains(len),
        }));
    }
}
