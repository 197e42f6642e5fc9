//! Scenario descriptions for the simulator: `healthy`, `errors=2x`, `latency=+30%`, … joined by commas.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Parameters of a synthetic world. Defaults: 200 req/s, 0.5 % errors on both colours, log-normal
/// latency with a median of 80 ms (p99 ≈ 0.32 s), no noise, no outage.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub rps: f64,
    pub blue_error_rate: f64,
    /// Green's error rate = blue's × this.
    pub error_multiplier: f64,
    pub latency_median_s: f64,
    pub latency_sigma: f64,
    /// Green's latencies = blue's × this.
    pub latency_multiplier: f64,
    /// Coefficient of variation of per-window gamma noise on each colour's error rate.
    pub overdispersion_cv: f64,
    /// Load varies ±50 % over 24 h.
    pub diurnal: bool,
    /// Metrics outages: (start after the rollout began, length).
    pub outages: Vec<(Duration, Duration)>,
    /// Green regresses only from this step index on (0 = from the start).
    pub regression_from_step: usize,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            rps: 200.0,
            blue_error_rate: 0.005,
            error_multiplier: 1.0,
            latency_median_s: 0.08,
            latency_sigma: 0.6,
            latency_multiplier: 1.0,
            overdispersion_cv: 0.0,
            diurnal: false,
            outages: Vec::new(),
            regression_from_step: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError(pub String);

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (expected comma-separated items: healthy, errors=2x, latency=+30%, \
             overdispersion=0.3, diurnal, outage=30m+10m, from-step=2, rps=50, blue-errors=0.5%)",
            self.0
        )
    }
}

impl std::error::Error for ScenarioError {}

impl Scenario {
    /// Load multiplier at `elapsed` into the rollout.
    pub fn load_factor(&self, elapsed: Duration) -> f64 {
        if !self.diurnal {
            return 1.0;
        }
        let day = 24.0 * 3600.0;
        1.0 + 0.5 * (2.0 * std::f64::consts::PI * elapsed.as_secs_f64() / day).sin()
    }

    /// Whether the window starting at `elapsed` and lasting `secs` overlaps an outage.
    pub fn in_outage(&self, elapsed: Duration, secs: f64) -> bool {
        let a = elapsed.as_secs_f64();
        let b = a + secs;
        self.outages.iter().any(|(start, len)| {
            let s = start.as_secs_f64();
            a < s + len.as_secs_f64() && b > s
        })
    }
}

fn multiplier(v: &str) -> Result<f64, ScenarioError> {
    let bad = || ScenarioError(format!("bad multiplier {v:?}"));
    let v = v.trim();
    if let Some(x) = v.strip_suffix(['x', 'X']) {
        return x.parse::<f64>().map_err(|_| bad()).and_then(positive(v));
    }
    if let Some(p) = v.strip_suffix('%') {
        let p: f64 = p.trim_start_matches('+').parse().map_err(|_| bad())?;
        return positive(v)(1.0 + p / 100.0);
    }
    v.parse::<f64>().map_err(|_| bad()).and_then(positive(v))
}

fn positive(v: &str) -> impl Fn(f64) -> Result<f64, ScenarioError> + '_ {
    move |x| {
        if x.is_finite() && x > 0.0 {
            Ok(x)
        } else {
            Err(ScenarioError(format!("{v:?} must be positive")))
        }
    }
}

fn rate(v: &str) -> Result<f64, ScenarioError> {
    let bad = || ScenarioError(format!("bad rate {v:?}"));
    let x = match v.strip_suffix('%') {
        Some(p) => p.parse::<f64>().map_err(|_| bad())? / 100.0,
        None => v.parse::<f64>().map_err(|_| bad())?,
    };
    if (0.0..1.0).contains(&x) {
        Ok(x)
    } else {
        Err(bad())
    }
}

fn duration(v: &str) -> Result<Duration, ScenarioError> {
    humantime::parse_duration(v).map_err(|e| ScenarioError(format!("bad duration {v:?}: {e}")))
}

impl FromStr for Scenario {
    type Err = ScenarioError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut sc = Scenario::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            let need = || ScenarioError(format!("{key} needs a value"));
            match (key, value) {
                ("healthy", None) => {}
                ("diurnal", None) => sc.diurnal = true,
                ("errors", Some(v)) => sc.error_multiplier = multiplier(v)?,
                ("latency", Some(v)) => sc.latency_multiplier = multiplier(v)?,
                ("overdispersion", Some(v)) => {
                    sc.overdispersion_cv = v
                        .parse::<f64>()
                        .ok()
                        .filter(|x| *x >= 0.0 && x.is_finite())
                        .ok_or_else(|| ScenarioError(format!("bad overdispersion {v:?}")))?
                }
                ("outage", Some(v)) => {
                    let (start, len) = v.split_once('+').ok_or_else(|| {
                        ScenarioError(format!("outage {v:?} must look like 30m+10m"))
                    })?;
                    sc.outages.push((duration(start)?, duration(len)?));
                }
                ("from-step", Some(v)) => {
                    sc.regression_from_step = v
                        .parse()
                        .map_err(|_| ScenarioError(format!("bad step index {v:?}")))?
                }
                ("rps", Some(v)) => sc.rps = multiplier(v)?,
                ("blue-errors", Some(v)) => sc.blue_error_rate = rate(v)?,
                (_, None) if matches!(key, "errors" | "latency" | "outage" | "rps") => {
                    return Err(need())
                }
                _ => return Err(ScenarioError(format!("unknown scenario item {item:?}"))),
            }
        }
        Ok(sc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let s: Scenario = "errors=2x,latency=+30%,overdispersion=0.3,diurnal,outage=30m+10m"
            .parse()
            .unwrap();
        assert_eq!(s.error_multiplier, 2.0);
        assert!((s.latency_multiplier - 1.3).abs() < 1e-12);
        assert_eq!(s.overdispersion_cv, 0.3);
        assert!(s.diurnal);
        assert_eq!(
            s.outages,
            vec![(Duration::from_secs(1800), Duration::from_secs(600))]
        );
        assert_eq!("healthy".parse::<Scenario>().unwrap(), Scenario::default());
    }

    #[test]
    fn rejects_nonsense_with_the_accepted_forms() {
        for bad in [
            "errors=abc",
            "errors",
            "latency=-50x",
            "bogus",
            "outage=30m",
            "blue-errors=2",
        ] {
            let e = bad.parse::<Scenario>().unwrap_err().to_string();
            assert!(e.contains("expected comma-separated items"), "{bad}: {e}");
        }
    }

    #[test]
    fn outage_overlap() {
        let s: Scenario = "outage=10m+5m".parse().unwrap();
        assert!(!s.in_outage(Duration::from_secs(540), 60.0));
        assert!(s.in_outage(Duration::from_secs(570), 60.0));
        assert!(s.in_outage(Duration::from_secs(840), 60.0));
        assert!(!s.in_outage(Duration::from_secs(900), 60.0));
    }
}
