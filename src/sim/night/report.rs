//! The outcome of many simulated nights: faults, violations and outcomes per world.

use std::collections::BTreeMap;

use super::{Fault, NightResult, Violation};
use crate::engine::Phase;

/// The outcome of many nights.
#[derive(Debug, Default, Clone)]
pub struct SoakReport {
    pub nights: usize,
    pub hours: f64,
    pub faults: BTreeMap<Fault, u64>,
    pub violations: Vec<Violation>,
    /// Per world: (nights, promoted, rolled back, minutes to the end of each decided night,
    /// green requests, bad green requests).
    pub worlds: BTreeMap<&'static str, WorldOutcome>,
}

#[derive(Debug, Default, Clone)]
pub struct WorldOutcome {
    pub regression: bool,
    pub nights: usize,
    pub promoted: usize,
    pub rolled_back: usize,
    pub minutes: Vec<f64>,
    pub bad_green: u64,
    pub green_requests: u64,
    /// Rollbacks by cause (operator, evidence, green data missing, threshold guard).
    pub causes: BTreeMap<&'static str, usize>,
}

impl SoakReport {
    pub fn add(&mut self, r: &NightResult) {
        self.nights += 1;
        self.hours += r.hours;
        for (f, n) in &r.faults {
            *self.faults.entry(*f).or_default() += n;
        }
        if let Some(v) = &r.violation {
            self.violations.push(v.clone());
        }
        let o = self.worlds.entry(r.world).or_default();
        o.regression = r.regression;
        o.nights += 1;
        match r.phase {
            Some(Phase::Promoted) => o.promoted += 1,
            Some(Phase::RolledBack) => o.rolled_back += 1,
            _ => {}
        }
        if let Some(m) = r.minutes_to_end {
            o.minutes.push(m);
        }
        if let Some(c) = r.rollback_cause {
            *o.causes.entry(c).or_default() += 1;
        }
        o.bad_green += r.bad_green;
        o.green_requests += r.green_requests;
    }

    /// A Markdown report: nights, faults, violations, outcomes per world.
    pub fn table(&self) -> String {
        let mut out = format!(
            "nights: {}, simulated hours: {:.0}, invariant violations: {}\n\n| fault | injected |\n|---|---:|\n",
            self.nights,
            self.hours,
            self.violations.len()
        );
        for (f, n) in &self.faults {
            out.push_str(&format!("| {f} | {n} |\n"));
        }
        out.push_str("\n| world | green is | nights | promoted | rolled back | by the statistics | by an operator | for green's missing data | median minutes to the end | bad green requests per night |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (name, o) in &self.worlds {
            let mut m = o.minutes.clone();
            m.sort_by(f64::total_cmp);
            let median = if m.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", m[m.len() / 2])
            };
            let cause = |c: &str| o.causes.get(c).copied().unwrap_or(0);
            out.push_str(&format!(
                "| {name} | {} | {} | {} ({:.1} %) | {} ({:.1} %) | {} | {} | {} | {median} | {:.0} |\n",
                if o.regression { "worse" } else { "healthy" },
                o.nights,
                o.promoted,
                100.0 * o.promoted as f64 / o.nights.max(1) as f64,
                o.rolled_back,
                100.0 * o.rolled_back as f64 / o.nights.max(1) as f64,
                cause("evidence") + cause("threshold guard"),
                cause("operator"),
                cause("green data missing"),
                o.bad_green as f64 / o.nights.max(1) as f64,
            ));
        }
        for v in self.violations.iter().take(20) {
            out.push_str(&format!("\nviolation: {v}"));
        }
        out
    }
}
