//! `cache-bench sweep`: steps the offered rate (a fixed ladder, or doubling until the SLO
//! breaks and then bisection) and reports, per step, the achieved rate and latency, and
//! the highest rate that met the SLO. Answers "how many hosts for X req/s at p99 ≤ Y".

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::load::{self, LoadConfig};

/// A latency objective: percentile `quantile` at most `limit`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Slo {
    pub label: String,
    pub quantile: f64,
    #[serde(serialize_with = "micros")]
    pub limit: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_micros())
}

impl FromStr for Slo {
    type Err = String;

    /// `p99=500us`, `p99.9=2ms`, `p50=100us`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (p, limit) = s
            .split_once('=')
            .ok_or_else(|| format!("SLO must look like p99=500us, got {s:?}"))?;
        let percent: f64 = p
            .strip_prefix('p')
            .and_then(|v| v.parse().ok())
            .filter(|v: &f64| (0.0..100.0).contains(v))
            .ok_or_else(|| format!("{p:?} is not a percentile like p99 or p99.9"))?;
        let limit = humantime::parse_duration(limit).map_err(|e| format!("{limit:?}: {e}"))?;
        Ok(Slo {
            label: p.to_owned(),
            quantile: percent / 100.0,
            limit,
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub slo_us: u64,
    pub errors: u64,
    pub meets_slo: bool,
}

/// Whether a step met the objective: it kept up (achieved within 2 % of offered, no
/// errors) and the percentile stayed within the limit.
pub fn meets(slo: &Slo, offered: f64, achieved: f64, errors: u64, at_quantile_us: u64) -> bool {
    achieved >= offered * 0.98 && errors == 0 && at_quantile_us <= slo.limit.as_micros() as u64
}

pub fn run_step(base: &LoadConfig, slo: &Slo, rate: f64) -> anyhow::Result<Step> {
    let config = LoadConfig {
        rate: Some(rate),
        prefill: false,
        ..base.clone()
    };
    let report = load::run(config)?;
    let all = report.recorded.all();
    let achieved = report.throughput();
    let errors = report.recorded.errors.total();
    let at = all.value_at_quantile(slo.quantile);
    Ok(Step {
        offered_rps: rate,
        achieved_rps: achieved,
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
        p999_us: all.value_at_quantile(0.999),
        slo_us: at,
        errors,
        meets_slo: meets(slo, rate, achieved, errors, at),
    })
}

/// The rates to try: `from..=to` in `steps` equal steps.
pub fn ladder(from: f64, to: f64, steps: usize) -> Vec<f64> {
    if steps <= 1 {
        return vec![from];
    }
    (0..steps)
        .map(|i| from + (to - from) * i as f64 / (steps - 1) as f64)
        .collect()
}

/// Doubles from `from` until a step fails (or `ceiling`), then bisects `rounds` times
/// between the last rate that passed and the first that failed.
pub fn search(
    mut probe: impl FnMut(f64) -> anyhow::Result<bool>,
    from: f64,
    ceiling: f64,
    rounds: usize,
) -> anyhow::Result<Option<f64>> {
    let (mut good, mut bad) = (None, None);
    let mut rate = from;
    while rate <= ceiling {
        if probe(rate)? {
            good = Some(rate);
            rate *= 2.0;
        } else {
            bad = Some(rate);
            break;
        }
    }
    if let (Some(mut lo), Some(mut hi)) = (good, bad) {
        for _ in 0..rounds {
            let mid = (lo + hi) / 2.0;
            if probe(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        good = Some(lo);
    }
    Ok(good)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slos_parse_percentiles_and_durations() {
        let slo: Slo = "p99=500us".parse().unwrap();
        assert_eq!(
            (slo.quantile, slo.limit),
            (0.99, Duration::from_micros(500))
        );
        let slo: Slo = "p99.9=2ms".parse().unwrap();
        assert!((slo.quantile - 0.999).abs() < 1e-12);
        assert!("99=1ms".parse::<Slo>().is_err());
        assert!("p100=1ms".parse::<Slo>().is_err());
        assert!("p99=soon".parse::<Slo>().is_err());
    }

    #[test]
    fn a_step_passes_only_if_it_kept_up_without_errors_within_the_limit() {
        let slo: Slo = "p99=1ms".parse().unwrap();
        assert!(meets(&slo, 1000.0, 995.0, 0, 900));
        assert!(!meets(&slo, 1000.0, 900.0, 0, 900), "fell behind");
        assert!(!meets(&slo, 1000.0, 1000.0, 1, 900), "errors");
        assert!(!meets(&slo, 1000.0, 1000.0, 0, 1001), "too slow");
    }

    #[test]
    fn the_search_finds_the_capacity_edge() {
        // A system that meets the SLO up to 37,000 req/s.
        let mut tried = Vec::new();
        let found = search(
            |r| {
                tried.push(r);
                Ok(r <= 37_000.0)
            },
            1000.0,
            1e7,
            8,
        )
        .unwrap()
        .unwrap();
        assert!(
            (35_000.0..=37_000.0).contains(&found),
            "{found} after {tried:?}"
        );
        assert_eq!(
            &tried[..7],
            &[1000.0, 2000.0, 4000.0, 8000.0, 16000.0, 32000.0, 64000.0]
        );
        assert_eq!(search(|_| Ok(false), 1000.0, 1e7, 4).unwrap(), None);
        assert_eq!(ladder(100.0, 400.0, 4), vec![100.0, 200.0, 300.0, 400.0]);
    }
}
