//! The fault kinds a simulated night injects, their rates, and how many fired.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::Rng;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// A Consul request fails (nothing applied).
    ConsulError,
    /// A Consul write is applied but its answer is lost (the caller sees an error).
    ConsulTimeout,
    /// Someone else writes the state between a read and a compare-and-set.
    CasConflict,
    /// The leader's session is invalidated; another instance may take over.
    LeaderLoss,
    /// The daemon dies just before a write.
    CrashBeforeWrite,
    /// The daemon dies just after a write.
    CrashAfterWrite,
    /// The metrics backend is down for a while.
    MetricsOutage,
    /// Metrics answers come too late (query timeout).
    MetricsSlow,
    /// Metrics answers are garbage: NaN, 1e300, green missing.
    MetricsGarbage,
    /// An instance's wall clock jumps backwards or forwards.
    ClockJump,
    /// A human changes the weights by hand (and later resumes or rolls back).
    HumanEdit,
    /// The alert receiver is down for hours.
    AlertsDown,
    /// A second instance races for the leader lock.
    LockRace,
    /// The leader's machine is gone for good, its local disk with it (while another instance
    /// is there to take over).
    InstanceLost,
    /// An HAProxy node restarts: its runtime weights are the configuration's again, under a
    /// new process.
    HaproxyReload,
    /// An HAProxy node's Runtime API stops answering for a while.
    HaproxyUnreachable,
}

impl Fault {
    pub const ALL: [Fault; 16] = [
        Fault::ConsulError,
        Fault::ConsulTimeout,
        Fault::CasConflict,
        Fault::LeaderLoss,
        Fault::CrashBeforeWrite,
        Fault::CrashAfterWrite,
        Fault::MetricsOutage,
        Fault::MetricsSlow,
        Fault::MetricsGarbage,
        Fault::ClockJump,
        Fault::HumanEdit,
        Fault::AlertsDown,
        Fault::LockRace,
        Fault::InstanceLost,
        Fault::HaproxyReload,
        Fault::HaproxyUnreachable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::ConsulError => "consul-error",
            Fault::ConsulTimeout => "consul-timeout",
            Fault::CasConflict => "cas-conflict",
            Fault::LeaderLoss => "leader-loss",
            Fault::CrashBeforeWrite => "crash-before-write",
            Fault::CrashAfterWrite => "crash-after-write",
            Fault::MetricsOutage => "metrics-outage",
            Fault::MetricsSlow => "metrics-slow",
            Fault::MetricsGarbage => "metrics-garbage",
            Fault::ClockJump => "clock-jump",
            Fault::HumanEdit => "human-edit",
            Fault::AlertsDown => "alerts-down",
            Fault::LockRace => "lock-race",
            Fault::InstanceLost => "instance-lost",
            Fault::HaproxyReload => "haproxy-reload",
            Fault::HaproxyUnreachable => "haproxy-unreachable",
        }
    }

    /// Default chance per opportunity: per I/O call for Consul faults and crashes, per
    /// simulated interval for the others (per node for the HAProxy faults; lock-race: whether a
    /// second instance runs at all).
    pub fn default_rate(self) -> f64 {
        match self {
            Fault::ConsulError => 0.02,
            Fault::ConsulTimeout => 0.01,
            Fault::CasConflict => 0.01,
            Fault::LeaderLoss => 0.003,
            Fault::CrashBeforeWrite => 0.004,
            Fault::CrashAfterWrite => 0.004,
            Fault::MetricsOutage => 0.004,
            Fault::MetricsSlow => 0.01,
            Fault::MetricsGarbage => 0.02,
            Fault::ClockJump => 0.002,
            Fault::HumanEdit => 0.002,
            Fault::AlertsDown => 0.003,
            Fault::LockRace => 1.0,
            Fault::InstanceLost => 0.002,
            Fault::HaproxyReload => 0.002,
            Fault::HaproxyUnreachable => 0.002,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown fault {s:?} (known: {})",
                    Fault::ALL.map(Fault::name).join(", ")
                )
            })
    }
}

/// The rate of each enabled fault, and how often each fired.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub rates: BTreeMap<Fault, f64>,
    pub fired: BTreeMap<Fault, u64>,
}

impl Faults {
    /// Every fault at its default rate.
    pub fn all() -> Self {
        Self::only(&Fault::ALL)
    }

    /// No fault at all.
    pub fn none() -> Self {
        Faults::default()
    }

    pub fn only(kinds: &[Fault]) -> Self {
        Faults {
            rates: kinds.iter().map(|f| (*f, f.default_rate())).collect(),
            fired: BTreeMap::new(),
        }
    }

    /// `all`, `none`, or a comma-separated list of fault names (`name=rate` to set a rate).
    pub fn parse(list: &str) -> Result<Self, String> {
        match list.trim() {
            "all" => return Ok(Self::all()),
            "none" | "" => return Ok(Self::none()),
            _ => {}
        }
        let mut rates = BTreeMap::new();
        for item in list.split(',').map(str::trim) {
            let (name, rate) = match item.split_once('=') {
                Some((n, r)) => {
                    let rate: f64 = r
                        .parse()
                        .map_err(|_| format!("fault rate {r:?} is not a number"))?;
                    if !(0.0..=1.0).contains(&rate) {
                        return Err(format!("fault rate {rate} is not between 0 and 1"));
                    }
                    (n, Some(rate))
                }
                None => (item, None),
            };
            let f: Fault = name.parse()?;
            rates.insert(f, rate.unwrap_or_else(|| f.default_rate()));
        }
        Ok(Faults {
            rates,
            fired: BTreeMap::new(),
        })
    }

    pub fn enabled(&self, f: Fault) -> bool {
        self.rates.get(&f).is_some_and(|r| *r > 0.0)
    }

    /// Draws whether `f` fires now, and counts it.
    pub fn fire(&mut self, f: Fault, rng: &mut StdRng) -> bool {
        let Some(rate) = self.rates.get(&f).copied() else {
            return false;
        };
        if rate > 0.0 && rng.random::<f64>() < rate {
            *self.fired.entry(f).or_default() += 1;
            true
        } else {
            false
        }
    }
}
