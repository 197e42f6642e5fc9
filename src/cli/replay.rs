//! `greenlight replay POLICY --from T --to T`: backtest a policy on history stored in the
//! metrics backend, window by window, as if greenlight had been running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use jiff::{SignedDuration, Timestamp};

use super::simulate::load_one;
use crate::engine::Observation;
use crate::metrics::{aligned_end, observe_with, MetricsSettings, ObserveOptions, PromClient};
use crate::policy::{Colour, Config, Policy, Roles};
use crate::sim::replay::{Replay, ReplayReport, ReplayWindow};
use crate::sim::Outcome;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Policy file to backtest.
    pub policy: PathBuf,
    /// Start of the range: RFC 3339 (`2026-01-05T22:00:00Z`) or relative to now (`-6h`).
    #[arg(long, allow_hyphen_values = true)]
    pub from: String,
    /// End of the range (exclusive): RFC 3339, relative (`-10m`) or `now`.
    #[arg(long, allow_hyphen_values = true, default_value = "now")]
    pub to: String,
    /// Print one JSON object instead of the timeline.
    #[arg(long)]
    pub json: bool,
}

/// What the weights in history mean for a replay; printed with every report.
const HISTORY_NOTE: &str = "Replay evaluates the recorded traffic split: the weights in history \
are whatever they were, not the steps the replayed decisions would have set.";

pub fn run(config: Option<&Path>, args: ReplayArgs) -> i32 {
    let (policy, client, options, from, to) =
        match prepare(config, &args.policy, &args.from, &args.to) {
            Ok(v) => v,
            Err(code) => return code,
        };
    let report = match super::runtime() {
        Ok(rt) => rt.block_on(replay(&client, &policy, &options, from, to)),
        Err(code) => return code,
    };
    if args.json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        value["note"] = serde_json::Value::String(HISTORY_NOTE.into());
        println!("{value}");
    } else {
        print_report(&policy, &report);
    }
    0
}

/// Loads the policy and config, builds the client, parses the range.
pub(crate) fn prepare(
    config: Option<&Path>,
    policy: &Path,
    from: &str,
    to: &str,
) -> Result<(Policy, PromClient, ObserveOptions, Timestamp, Timestamp), i32> {
    let policy = load_one(policy)?;
    let config = match config {
        Some(path) => Config::load(path).map_err(|errors| {
            for e in errors {
                eprintln!("{e}");
            }
            super::EXIT_CONFIG
        })?,
        None => Config::default(),
    };
    let now = Timestamp::now();
    let (from, to) = match (parse_time(from, now), parse_time(to, now)) {
        (Ok(f), Ok(t)) if f < t => (f, t),
        (Ok(_), Ok(_)) => {
            eprintln!("error: --from must be before --to");
            return Err(super::EXIT_CONFIG);
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return Err(super::EXIT_CONFIG);
        }
    };
    let settings = MetricsSettings::from_config(&config.metrics).map_err(|e| {
        eprintln!("error: {e}");
        super::EXIT_CONFIG
    })?;
    let client = PromClient::new(settings).map_err(|e| {
        eprintln!("error: {e}");
        super::EXIT_CONFIG
    })?;
    let options = ObserveOptions {
        max_sample_age: Some(config.metrics.max_staleness),
        ..ObserveOptions::default()
    };
    Ok((policy, client, options, from, to))
}

/// RFC 3339, `now`, or a duration before now (`-2h`, `90m`).
pub(crate) fn parse_time(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    let t = text.trim();
    if t == "now" {
        return Ok(now);
    }
    if let Ok(ts) = t.parse::<Timestamp>() {
        return Ok(ts);
    }
    let ago = humantime::parse_duration(t.trim_start_matches('-')).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time, `now`, nor a duration like -2h")
    })?;
    SignedDuration::try_from(ago)
        .ok()
        .and_then(|d| now.checked_sub(d).ok())
        .ok_or_else(|| format!("{text:?} is too far in the past"))
}

/// The aligned windows `[start, end)` of length `interval` inside `[from, to)`.
pub(crate) fn windows(from: Timestamp, to: Timestamp, interval: Duration) -> Vec<Observation> {
    let step = SignedDuration::try_from(interval).unwrap_or(SignedDuration::from_mins(1));
    let first_end = aligned_end(
        from + step - SignedDuration::from_millis(1),
        interval,
        Duration::ZERO,
    ) + step;
    let mut out = Vec::new();
    let mut end = first_end;
    while end <= to {
        out.push(Observation {
            start: end - step,
            end,
            checks: Vec::new(),
        });
        end += step;
    }
    out
}

/// Replays `policy` over the aligned windows of `[from, to)`, stopping at promotion or rollback.
pub async fn replay(
    client: &PromClient,
    policy: &Policy,
    options: &ObserveOptions,
    from: Timestamp,
    to: Timestamp,
) -> ReplayReport {
    // History carries the traffic split of its own time, not the replayed weights.
    let mut policy = policy.clone();
    policy.data_quality.check_traffic_split = false;
    let policy = &policy;
    let mut r = Replay::new(policy, from);
    for w in windows(from, to, policy.interval) {
        let obs = observe_with(
            client,
            policy,
            (w.start, w.end),
            Roles::stable(Colour::Blue),
            options,
        )
        .await;
        r.push(&obs);
        if r.done() {
            break;
        }
    }
    r.finish(from, to)
}

fn print_report(policy: &Policy, r: &ReplayReport) {
    println!(
        "Replaying {} from {} to {} (interval {}, steps {:?}).",
        policy.api,
        r.from,
        r.to,
        humantime::format_duration(policy.interval),
        policy.steps
    );
    println!("{HISTORY_NOTE}");
    println!(
        "{:<22}  {:>6}  {:<9}  reason",
        "window end", "green", "decision"
    );
    let mut last_kind = String::new();
    for (i, w) in r.timeline.iter().enumerate() {
        let kind: String = w.reason.split([':', '(']).next().unwrap_or("").to_string();
        let notable = w.action != crate::engine::Action::Hold
            || kind != last_kind
            || i + 1 == r.timeline.len();
        last_kind = kind;
        if notable {
            println!("{}", line(w));
        }
    }
    println!();
    match (r.outcome, r.decided_at) {
        (Outcome::RolledBack, Some(at)) => println!(
            "ROLLED BACK at {at}, {} after the start.",
            humantime::format_duration(Duration::from_secs(
                (at.as_second() - r.from.as_second()).max(0) as u64
            ))
        ),
        (Outcome::Promoted, Some(at)) => println!("PROMOTED at {at}."),
        _ => println!("HELD: neither promoted nor rolled back by {}.", r.to),
    }
    println!("Last reason: {}", r.final_reason);
}

fn line(w: &ReplayWindow) -> String {
    format!(
        "{:<22}  {:>5.1}%  {:<9}  {}",
        w.end.to_string(),
        w.green_percent,
        w.action.as_str(),
        w.reason
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_relative_or_now() {
        let now: Timestamp = "2026-01-05T12:00:00Z".parse().unwrap();
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(
            parse_time("-2h", now).unwrap(),
            "2026-01-05T10:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            parse_time("2026-01-05T08:30:00+01:00", now).unwrap(),
            "2026-01-05T07:30:00Z".parse::<Timestamp>().unwrap()
        );
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn windows_are_aligned_contiguous_and_inside_the_range() {
        let from: Timestamp = "2026-01-05T10:00:30Z".parse().unwrap();
        let to: Timestamp = "2026-01-05T10:05:10Z".parse().unwrap();
        let w = windows(from, to, Duration::from_secs(60));
        assert_eq!(w.len(), 4);
        assert_eq!(
            w[0].start,
            "2026-01-05T10:01:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            w[3].end,
            "2026-01-05T10:05:00Z".parse::<Timestamp>().unwrap()
        );
        assert!(w.windows(2).all(|p| p[0].end == p[1].start));
    }
}
