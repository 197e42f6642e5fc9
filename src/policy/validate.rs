//! Validation of a whole policy: names, durations, rates, traffic target, steps, schedule, alerts.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::checks::validate_checks;
use super::cohort::CohortRules;
use super::limits::{self, count_in, duration_in};
use super::located::{explicit, number, parse_toml, shown, Errors};
use super::query::{validate_query, QueryKind};
use super::raw::{
    RawBakeBreach, RawGreenMissingAction, RawHaproxyTarget, RawMaxStepAction, RawPolicy,
    RawSchedule, RawTraffic,
};
use super::sticky::{validate_sticky, Sticky, StickyContext, TrafficMode};
use super::values::Table;
use super::{
    Bake, BakeBreach, HaproxyServers, MaxStepAction, Policy, PolicyContext, PolicyError,
    ReleaseQuery, Schedule, TimeWindow, Traffic, TrafficTarget,
};

/// Parses and validates one policy; also returns the span of its `api` value (for messages
/// about duplicates across files).
pub(super) fn parse_policy(
    text: &str,
    file: &Path,
    context: PolicyContext<'_>,
) -> Result<(Policy, Range<usize>), Vec<PolicyError>> {
    let mut errors = Errors::new(text, file);
    let Some(raw) = parse_toml::<RawPolicy>(text, &mut errors) else {
        return Err(errors.into_sorted());
    };
    let api_span = raw.api.span();
    match raw.validate(file, context, &mut errors) {
        Some(policy) if errors.is_empty() => Ok((policy, api_span)),
        _ => Err(errors.into_sorted()),
    }
}

impl Policy {
    /// Parses and validates a policy file's text. `file` is used in messages and recorded as the
    /// policy's source. With `channels`, every name in `alerts` must be one of them.
    pub fn from_toml(
        text: &str,
        file: &Path,
        channels: Option<&[String]>,
    ) -> Result<Policy, Vec<PolicyError>> {
        let context = PolicyContext {
            channels,
            consul_prefix: None,
        };
        parse_policy(text, file, context).map(|(policy, _)| policy)
    }
}

impl RawPolicy {
    fn validate(
        self,
        file: &Path,
        context: PolicyContext<'_>,
        errors: &mut Errors<'_>,
    ) -> Option<Policy> {
        let channels = context.channels;
        let api = self.api.get_ref().clone();
        if !is_api_name(&api) {
            errors.at(
                self.api.span(),
                format!(
                    "api name {} must be non-empty and use only letters, digits, '_' and '-' \
                     (it becomes part of Consul keys)",
                    shown(&api)
                ),
            );
        }

        let interval = duration_in(&self.interval, "interval", limits::INTERVAL, errors);
        let min_step = duration_in(
            &self.min_step_duration,
            "min_step_duration",
            limits::STEP_DURATION,
            errors,
        );
        let no_data_alert_after = duration_in(
            &self.no_data_alert_after,
            "no_data_alert_after",
            limits::ALERT_AFTER,
            errors,
        );
        let stuck_alert_after = duration_in(
            &self.stuck_alert_after,
            "stuck_alert_after",
            limits::ALERT_AFTER,
            errors,
        );
        let max_step = self
            .max_step_duration
            .as_ref()
            .map(|d| duration_in(d, "max_step_duration", limits::STEP_DURATION, errors));
        let bake_duration = self
            .bake
            .as_ref()
            .map(|d| duration_in(d, "bake", limits::STEP_DURATION, errors));
        if let (None, Some(on)) = (&self.bake, &self.bake_on_breach) {
            errors.at(
                on.span(),
                "bake_on_breach needs bake (how long to watch after the last step)".to_string(),
            );
        }
        let bake = bake_duration.map(|duration| Bake {
            duration,
            on_breach: match self.bake_on_breach.as_ref().map(|b| *b.get_ref()) {
                None | Some(RawBakeBreach::Rollback) => BakeBreach::Rollback,
                Some(RawBakeBreach::Alert) => BakeBreach::Alert,
            },
        });
        if limits::INTERVAL.contains(interval) && min_step < interval {
            errors.at(
                explicit(&[self.min_step_duration.span(), self.interval.span()]),
                format!(
                    "min_step_duration ({}) must be at least interval ({})",
                    humantime::format_duration(min_step),
                    humantime::format_duration(interval)
                ),
            );
        }
        if let (Some(max), Some(max_d)) = (&self.max_step_duration, max_step) {
            if limits::STEP_DURATION.contains(max_d) && max_d < min_step {
                errors.at(
                    max.span(),
                    format!(
                        "max_step_duration ({}) must be at least min_step_duration ({})",
                        humantime::format_duration(max_d),
                        humantime::format_duration(min_step)
                    ),
                );
            }
        }
        let min_green_requests_per_step = count_in(
            &self.min_green_requests_per_step,
            "min_green_requests_per_step",
            limits::REQUEST_COUNT,
            errors,
        );
        let warmup_intervals = count_in(
            &self.warmup_intervals,
            "warmup_intervals",
            limits::WARMUP_INTERVALS,
            errors,
        );

        if let Some(below) = &self.advance_on_dwell_below {
            let v = *below.get_ref();
            if !(v > 0.0 && v <= 100.0) {
                errors.at(
                    below.span(),
                    format!(
                        "advance_on_dwell_below must be a share in (0, 100] percent, got {}",
                        number(v)
                    ),
                );
            }
        }

        for (name, rate) in [
            ("false_rollback_rate", &self.false_rollback_rate),
            ("false_advance_rate", &self.false_advance_rate),
        ] {
            let v = *rate.get_ref();
            if !(limits::ALPHA_MIN..limits::ALPHA_BELOW).contains(&v) {
                errors.at(
                    rate.span(),
                    format!(
                        "{name} must be at least {} and below {}, got {}",
                        limits::ALPHA_MIN,
                        limits::ALPHA_BELOW,
                        number(v)
                    ),
                );
            }
        }

        let data_quality = self.data_quality(errors);
        let traffic = validate_traffic(&self.traffic, context.consul_prefix, errors);
        let steps = validate_steps(&self.steps, traffic.as_ref(), errors);
        let approval = self.approval(&steps, errors);
        let schedule = self
            .schedule
            .as_ref()
            .and_then(|s| validate_schedule(s, errors));
        let checks = validate_checks(
            &self.checks,
            &self.api,
            CohortRules::of(self.traffic.get_ref(), traffic.as_ref()),
            errors,
        );
        let release_query = self.release_query(errors);
        let alerts = validate_alerts(&self.alerts, channels, errors);
        let mut alert_routes = std::collections::BTreeMap::new();
        if let Some(routes) = &self.alert_routes {
            for (event, list) in routes.entries() {
                if let Some(list) = list {
                    alert_routes.insert(event.to_string(), validate_alerts(list, channels, errors));
                }
            }
        }

        Some(Policy {
            api,
            source: Some(file.to_path_buf()),
            interval,
            steps,
            min_step_duration: min_step,
            min_green_requests_per_step: min_green_requests_per_step?,
            max_step_duration: max_step,
            bake,
            release_query,
            on_max_step_duration: match self.on_max_step_duration {
                RawMaxStepAction::Hold => MaxStepAction::Hold,
                RawMaxStepAction::Advance => MaxStepAction::Advance,
            },
            advance_on_dwell_below: self.advance_on_dwell_below.map(|b| *b.get_ref()),
            false_rollback_rate: *self.false_rollback_rate.get_ref(),
            false_advance_rate: *self.false_advance_rate.get_ref(),
            warmup_intervals: u32::try_from(warmup_intervals?).ok()?,
            auto_start: self.auto_start,
            no_data_alert_after,
            stuck_alert_after,
            traffic: traffic?,
            schedule,
            checks,
            alerts,
            alert_routes,
            data_quality,
            access: crate::policy::Access {
                owners: validate_groups(&self.owners, "owners", errors),
                viewers: validate_groups(&self.viewers, "viewers", errors),
                approvers: validate_groups(&self.approvers, "approvers", errors),
            },
            approval,
            labels: super::labels::validate_labels(self.labels.as_ref(), errors),
            clusters: super::cluster::validate_clusters(
                self.clusters.as_ref(),
                self.green_cluster.as_ref(),
                errors,
            ),
        })
    }

    /// `max_requests_per_second`, `on_green_data_missing`, `green_data_missing_for`,
    /// `check_traffic_split`.
    /// `release_query` (any value query with `{color}`) and its `release_label`.
    fn release_query(&self, errors: &mut Errors<'_>) -> Option<ReleaseQuery> {
        let label = match &self.release_label {
            Some(l) => {
                let name = l.get_ref();
                let mut chars = name.chars();
                let valid = chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    errors.at(
                        l.span(),
                        format!("release_label must be a label name ([a-zA-Z_][a-zA-Z0-9_]*), got {name:?}"),
                    );
                }
                if self.release_query.is_none() {
                    errors.at(l.span(), "release_label needs release_query".to_string());
                }
                name.clone()
            }
            None => "version".to_string(),
        };
        let q = self.release_query.as_ref()?;
        let query = validate_query(
            "release_query",
            q,
            QueryKind::Value,
            self.api.get_ref(),
            false,
            errors,
        );
        Some(ReleaseQuery { query, label })
    }

    fn data_quality(&self, errors: &mut Errors<'_>) -> crate::policy::DataQuality {
        let mut dq = crate::policy::DataQuality::default();
        if let Some(rate) = &self.max_requests_per_second {
            let v = *rate.get_ref();
            if v.is_finite() && (1.0..=limits::MAX_REQUESTS_PER_SECOND).contains(&v) {
                dq.max_requests_per_second = v;
            } else {
                errors.at(
                    rate.span(),
                    format!(
                        "max_requests_per_second must be between 1 and {:e}, got {}",
                        limits::MAX_REQUESTS_PER_SECOND,
                        number(v)
                    ),
                );
            }
        }
        if let Some(action) = self.on_green_data_missing {
            dq.on_green_data_missing = match action {
                RawGreenMissingAction::Hold => crate::policy::GreenMissingAction::Hold,
                RawGreenMissingAction::Rollback => crate::policy::GreenMissingAction::Rollback,
            };
        }
        if let Some(check) = self.check_traffic_split {
            dq.check_traffic_split = check;
        }
        if let Some(d) = &self.green_data_missing_for {
            dq.green_data_missing_for =
                limits::duration_in(d, "green_data_missing_for", limits::ALERT_AFTER, errors);
        }
        dq
    }
}

pub(super) fn is_api_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Why `key` is not a Consul KV key that every Consul release accepts, if it is not.
pub(super) fn consul_key_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("must not be empty".into());
    }
    if key.starts_with('/') {
        return Some("must not start with '/'".into());
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ',' | '-' | '_' | '.' | '/')))
    {
        return Some(format!(
            "contains {c:?}; use only letters, digits and ',', '-', '_', '.', '/'"
        ));
    }
    if key.contains("../") {
        return Some("must not contain \"../\"".into());
    }
    for ext in [".json", ".txt", ".js"] {
        if key.ends_with(ext) {
            return Some(format!("must not end in {ext:?}"));
        }
    }
    None
}

/// Whether Consul key `key` is `prefix` or lies under it.
pub(super) fn inside_prefix(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// HAProxy proxy and server names: letters, digits, '-', '_', '.', ':'.
fn is_haproxy_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

fn validate_traffic(
    raw: &Spanned<Table<RawTraffic>>,
    consul_prefix: Option<&str>,
    errors: &mut Errors<'_>,
) -> Option<Traffic> {
    let t = raw.get_ref();
    let total = *t.total_weight.get_ref();
    let total_ok = (1..=256).contains(&total);
    if !total_ok {
        errors.at(
            t.total_weight.span(),
            format!("total_weight must be between 1 and 256 (HAProxy weights), got {total}"),
        );
    }
    let target = match (&t.consul_keys, &t.haproxy) {
        (Some(_), Some(h)) => {
            errors.at(
                h.span(),
                "set either traffic.consul_keys or traffic.haproxy, not both",
            );
            None
        }
        (None, None) => {
            errors.at(
                raw.span(),
                "[traffic] needs consul_keys = { blue, green } or haproxy = { backend, blue, green }",
            );
            None
        }
        (Some(keys), None) => {
            let k = keys.get_ref();
            let mut ok = true;
            for (name, key) in [("blue", &k.blue), ("green", &k.green)] {
                if let Some(problem) = consul_key_problem(key.get_ref()) {
                    errors.at(key.span(), format!("Consul key for {name} {problem}"));
                    ok = false;
                } else if let Some(prefix) =
                    consul_prefix.filter(|p| inside_prefix(key.get_ref(), p))
                {
                    errors.at(
                        key.span(),
                        format!(
                            "Consul key for {name} {} is inside greenlight's own prefix {} \
                             (consul.prefix), where it keeps its state and lock; use a key \
                             outside it",
                            shown(key.get_ref()),
                            shown(prefix)
                        ),
                    );
                    ok = false;
                }
            }
            if ok && k.blue.get_ref() == k.green.get_ref() {
                errors.at(
                    k.green.span(),
                    "blue and green must use different Consul keys",
                );
                ok = false;
            }
            ok.then(|| TrafficTarget::ConsulKeys {
                blue: k.blue.get_ref().clone(),
                green: k.green.get_ref().clone(),
            })
        }
        (None, Some(h)) => {
            validate_haproxy_servers(h.get_ref(), errors).map(|s| TrafficTarget::Haproxy {
                backend: s.backend,
                blue: s.blue,
                green: s.green,
            })
        }
    };
    let haproxy_backend = match (&t.haproxy_backend, &t.consul_keys) {
        (None, _) => Some(None),
        (Some(h), Some(_)) => validate_haproxy_servers(h.get_ref(), errors).map(Some),
        (Some(h), None) => {
            errors.at(
                h.span(),
                "traffic.haproxy_backend only applies with traffic.consul_keys",
            );
            None
        }
    };
    let total_weight = u32::try_from(total).ok().filter(|_| total_ok)?;
    let mut traffic = Traffic {
        target: target?,
        total_weight,
        haproxy_backend: haproxy_backend?,
        sticky: None,
    };
    traffic.sticky = validate_mode(raw, &traffic, consul_prefix, errors)?;
    Some(traffic)
}

/// `mode` and `[traffic.sticky]`: sticky needs the table and HAProxy servers to route with.
fn validate_mode(
    raw: &Spanned<Table<RawTraffic>>,
    traffic: &Traffic,
    consul_prefix: Option<&str>,
    errors: &mut Errors<'_>,
) -> Option<Option<Sticky>> {
    let t = raw.get_ref();
    let sticky_mode = t
        .mode
        .as_ref()
        .is_some_and(|m| *m.get_ref() == TrafficMode::Sticky);
    match (&t.sticky, sticky_mode) {
        (None, false) => Some(None),
        (Some(s), false) => {
            errors.at(
                s.span(),
                "[traffic.sticky] only applies with traffic.mode = \"sticky\"",
            );
            None
        }
        (None, true) => {
            errors.at(
                t.mode.as_ref().map(|m| m.span()).unwrap_or_else(|| raw.span()),
                "traffic.mode = \"sticky\" needs a [traffic.sticky] table with at least key = { header = \"…\" }",
            );
            None
        }
        (Some(s), true) => {
            let Some(servers) = traffic.haproxy_servers() else {
                errors.at(
                    s.span(),
                    "sticky mode routes users in HAProxy: set traffic.haproxy, or \
                     traffic.haproxy_backend with consul_keys",
                );
                return None;
            };
            let weight_keys = match &traffic.target {
                TrafficTarget::ConsulKeys { blue, green } => Some((blue.as_str(), green.as_str())),
                TrafficTarget::Haproxy { .. } => None,
            };
            let context = StickyContext {
                green: &servers.green,
                weight_keys,
                consul_prefix,
            };
            validate_sticky(s, &context, errors).map(Some)
        }
    }
}

fn validate_haproxy_servers(
    h: &RawHaproxyTarget,
    errors: &mut Errors<'_>,
) -> Option<HaproxyServers> {
    let mut ok = true;
    for (what, name) in [
        ("backend", &h.backend),
        ("blue server", &h.blue),
        ("green server", &h.green),
    ] {
        if !is_haproxy_name(name.get_ref()) {
            errors.at(
                name.span(),
                format!(
                    "HAProxy {what} name {} must be non-empty and use only letters, \
                     digits, '-', '_', '.' and ':'",
                    shown(name.get_ref())
                ),
            );
            ok = false;
        }
    }
    if ok && h.blue.get_ref() == h.green.get_ref() {
        errors.at(h.green.span(), "blue and green must be different servers");
        ok = false;
    }
    ok.then(|| HaproxyServers {
        backend: h.backend.get_ref().clone(),
        blue: h.blue.get_ref().clone(),
        green: h.green.get_ref().clone(),
    })
}

fn validate_steps(
    raw: &Spanned<Vec<Spanned<f64>>>,
    traffic: Option<&Traffic>,
    errors: &mut Errors<'_>,
) -> Vec<f64> {
    let steps = raw.get_ref();
    if steps.is_empty() {
        errors.at(raw.span(), "steps must not be empty; the last step is 100");
        return Vec::new();
    }
    let mut previous: Option<f64> = None;
    let mut previous_green: Option<u32> = None;
    for step in steps {
        let v = *step.get_ref();
        if !(v > 0.0 && v <= 100.0) {
            errors.at(
                step.span(),
                format!("step {} must be in (0, 100]", number(v)),
            );
        } else if let Some(p) = previous.filter(|p| v <= *p) {
            errors.at(
                step.span(),
                format!("steps must be strictly increasing: {v} follows {p}"),
            );
        } else if let Some(t) = traffic {
            let green = t.weights_for(v).green;
            if green == 0 {
                errors.at(
                    step.span(),
                    format!(
                        "step {v}% gives green weight 0 at total_weight {}",
                        t.total_weight
                    ),
                );
            } else if previous_green == Some(green) {
                errors.at(
                    step.span(),
                    format!(
                        "step {v}% gives the same green weight ({green}) as the step before at \
                         total_weight {}",
                        t.total_weight
                    ),
                );
            }
            previous_green = Some(green);
        }
        if v.is_finite() {
            previous = Some(previous.map_or(v, |p| p.max(v)));
        }
    }
    if let Some(last) = steps.last() {
        if *last.get_ref() != 100.0 {
            errors.at(
                explicit(&[last.span(), raw.span()]),
                format!("the last step must be 100, got {}", last.get_ref()),
            );
        }
    }
    steps.iter().map(|s| *s.get_ref()).collect()
}

/// Parses `HH:MM` into minutes since midnight.
fn parse_clock(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    // Two ASCII digits each: `u16::from_str` alone would also take "+1".
    let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(h) && digits(m)) {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn parse_window(s: &str) -> Result<TimeWindow, String> {
    let bad = || {
        format!(
            "time window {} must be \"HH:MM-HH:MM\" (24-hour local time)",
            shown(s)
        )
    };
    let (start, end) = s.split_once('-').ok_or_else(bad)?;
    let start_minute = parse_clock(start.trim()).ok_or_else(bad)?;
    let end_minute = parse_clock(end.trim()).ok_or_else(bad)?;
    if start_minute == end_minute {
        return Err(format!(
            "time window {} is empty: start equals end",
            shown(s)
        ));
    }
    Ok(TimeWindow {
        start_minute,
        end_minute,
    })
}

pub(super) fn validate_schedule(
    raw: &Spanned<Table<RawSchedule>>,
    errors: &mut Errors<'_>,
) -> Option<Schedule> {
    let s = raw.get_ref();
    let tz = match jiff::tz::TimeZone::get(s.timezone.get_ref()) {
        Ok(tz) => Some(tz),
        Err(_) => {
            errors.at(
                s.timezone.span(),
                format!(
                    "unknown time zone {} (use an IANA name such as \"Europe/Paris\")",
                    shown(s.timezone.get_ref())
                ),
            );
            None
        }
    };
    if s.windows.get_ref().is_empty() {
        errors.at(
            s.windows.span(),
            "schedule.windows must list at least one window; remove [schedule] to progress at any time",
        );
    }
    let mut windows = Vec::new();
    for w in s.windows.get_ref() {
        match parse_window(w.get_ref()) {
            Ok(window) => windows.push(window),
            Err(message) => errors.at(w.span(), message),
        }
    }
    Some(Schedule {
        timezone: s.timezone.get_ref().clone(),
        tz: tz?,
        windows,
    })
}

/// `owners`, `viewers`, `approvers`: group names, each once.
pub(super) fn validate_groups(
    raw: &[Spanned<String>],
    field: &str,
    errors: &mut Errors<'_>,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for g in raw {
        let name = g.get_ref().trim();
        if name.is_empty() || name.contains(',') {
            errors.at(
                g.span(),
                format!("{field}: a group name must be non-empty and without commas"),
            );
        } else if names.iter().any(|n| n == name) {
            errors.at(
                g.span(),
                format!("{field}: group {} is listed twice", shown(name)),
            );
        } else {
            names.push(name.to_string());
        }
    }
    names
}

pub(super) fn validate_alerts(
    raw: &[Spanned<String>],
    channels: Option<&[String]>,
    errors: &mut Errors<'_>,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for alert in raw {
        let name = alert.get_ref();
        if names.contains(name) {
            errors.at(
                alert.span(),
                format!("alert channel {} is listed twice", shown(name)),
            );
            continue;
        }
        if let Some(channels) = channels {
            if !channels.contains(name) {
                let known = if channels.is_empty() {
                    "the daemon config declares no [[alert]] channels".to_string()
                } else {
                    format!("known: {}", channels.join(", "))
                };
                errors.at(
                    alert.span(),
                    format!("unknown alert channel {} ({known})", shown(name)),
                );
            }
        }
        names.push(name.clone());
    }
    names
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::fixture::{errors_of, variant, GOOD};
    use super::super::{
        CheckKind, HaproxyServers, MaxStepAction, Policy, PolicyContext, TimeWindow,
    };
    use super::parse_policy;

    #[test]
    fn a_bake_reads_its_duration_and_what_a_breach_does() {
        let text = variant(
            "alerts = [",
            "bake = \"30m\"\nbake_on_breach = \"alert\"\nalerts = [",
        );
        let p = Policy::from_toml(&text, Path::new("p.toml"), Some(&["oncall".into()])).unwrap();
        assert_eq!(
            p.bake,
            Some(super::super::Bake {
                duration: Duration::from_secs(1800),
                on_breach: super::super::BakeBreach::Alert,
            })
        );
        let text = variant("alerts = [", "bake = \"30m\"\nalerts = [");
        let p = Policy::from_toml(&text, Path::new("p.toml"), Some(&["oncall".into()])).unwrap();
        assert_eq!(
            p.bake.map(|b| b.on_breach),
            Some(super::super::BakeBreach::Rollback)
        );
    }

    #[test]
    fn good_policy_gets_defaults() {
        let p = Policy::from_toml(GOOD, Path::new("p.toml"), Some(&["oncall".into()])).unwrap();
        assert_eq!(p.api, "checkout");
        assert_eq!(p.interval, Duration::from_secs(60));
        assert_eq!(p.steps, vec![1.0, 5.0, 10.0, 25.0, 50.0, 100.0]);
        assert_eq!(p.min_step_duration, Duration::from_secs(600));
        assert_eq!(p.min_green_requests_per_step, 2000);
        assert_eq!(p.max_step_duration, None);
        assert_eq!(p.advance_on_dwell_below, None);
        assert_eq!(p.on_max_step_duration, MaxStepAction::Hold);
        assert_eq!(p.bake, None);
        assert_eq!(p.false_rollback_rate, 0.01);
        assert_eq!(p.false_advance_rate, 0.05);
        assert_eq!(p.warmup_intervals, 1);
        assert!(p.auto_start);
        assert_eq!(p.no_data_alert_after, Duration::from_secs(600));
        assert_eq!(p.stuck_alert_after, Duration::from_secs(3 * 3600));
        assert_eq!(p.traffic.total_weight, 100);
        assert_eq!(p.source.as_deref(), Some(Path::new("p.toml")));
        let s = p.schedule.as_ref().unwrap();
        assert_eq!(
            s.windows,
            vec![TimeWindow {
                start_minute: 22 * 60,
                end_minute: 6 * 60
            }]
        );
        assert_eq!(p.checks.len(), 3);
        match &p.checks[0].kind {
            CheckKind::ErrorRate {
                tolerance,
                advance_tolerance,
                overdispersion,
                min_errors,
                blue_max_error_rate,
                ..
            } => {
                assert_eq!(
                    (*tolerance, *advance_tolerance, *overdispersion, *min_errors),
                    (0.2, 0.5, 1.0, 5)
                );
                assert_eq!(*blue_max_error_rate, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        match &p.checks[1].kind {
            CheckKind::LatencyHistogram { edges, .. } => assert_eq!(edges, &vec![0.25, 1.0]),
            other => panic!("unexpected {other:?}"),
        }
        match &p.checks[2].kind {
            CheckKind::Threshold { failures, max, .. } => {
                assert_eq!((*failures, *max), (3, Some(0.5)))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(p.alerts, vec!["oncall".to_string()]);
        // Three statistical streams: one error rate plus two latency edges.
        assert!((p.alpha_per_stream() - 0.01 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn syntax_error_is_located() {
        let e = errors_of("api = \"x\"\nsteps = [1, 5\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("p.toml:2:"), "{e:?}");
    }

    #[test]
    fn unknown_key_points_at_the_key() {
        let e = errors_of(&variant("alerts = [", "intervall = \"1m\"\nalerts = ["));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("p.toml:3:1: "), "{e:?}");
        assert!(e[0].contains("intervall"), "{e:?}");
    }

    #[test]
    fn every_semantic_error_is_reported_at_once() {
        let text = variant(
            "alerts = [",
            "steps = [5, 1, 100]\nfalse_rollback_rate = 0.7\nalerts = [",
        )
        .replacen("\"22:00-06:00\"", "\"22:00-22:00\"", 1)
        .replacen("\"0.25\"", "\"+Inf\"", 1);
        let e = errors_of(&text);
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].starts_with("p.toml:3:13: steps must be strictly increasing"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("p.toml:4:23: false_rollback_rate"),
            "{e:?}"
        );
        assert!(e[2].starts_with("p.toml:12:12: time window"), "{e:?}");
        assert!(
            e[3].starts_with("p.toml:24:10: edge \"+Inf\" is the +Inf bucket"),
            "{e:?}"
        );
    }

    #[test]
    fn steps_must_end_at_100_and_give_distinct_weights() {
        let e = errors_of(&variant("alerts = [", "steps = [1, 50]\nalerts = ["));
        assert_eq!(e, vec!["p.toml:3:13: the last step must be 100, got 50"]);
        let e = errors_of(
            &variant("alerts = [", "steps = [1, 10, 14, 100]\nalerts = [").replacen(
                "[traffic]\n",
                "[traffic]\ntotal_weight = 10\n",
                1,
            ),
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:3:10: step 1% gives green weight 0"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("p.toml:3:17: step 14% gives the same"),
            "{e:?}"
        );
    }

    #[test]
    fn advance_on_dwell_below_is_a_share() {
        let e = errors_of(&variant(
            "alerts = [",
            "advance_on_dwell_below = 0\nalerts = [",
        ));
        assert_eq!(
            e,
            vec!["p.toml:3:26: advance_on_dwell_below must be a share in (0, 100] percent, got 0"]
        );
        let p = Policy::from_toml(
            &variant("alerts = [", "advance_on_dwell_below = 10\nalerts = ["),
            Path::new("p.toml"),
            Some(&["oncall".into()]),
        )
        .unwrap();
        assert!(p.is_probe_step(0) && p.is_probe_step(1) && !p.is_probe_step(2));
    }

    #[test]
    fn values_that_break_the_run_are_rejected_by_validation() {
        // Each of these passed validation and then panicked in a deadline computation, made
        // 1/α infinite, or was too small to be a window.
        for (line, needle) in [
            ("interval = \"20000y\"", "p.toml:3:12: interval must be between 1s and 1h, got 20000years"),
            ("interval = \"1ns\"", "p.toml:3:12: interval must be between 1s and 1h, got 1ns"),
            ("stuck_alert_after = \"20000y\"", "p.toml:3:21: stuck_alert_after must be between 1s and 30days"),
            ("no_data_alert_after = \"20000y\"", "p.toml:3:23: no_data_alert_after must be between 1s and 30days"),
            ("min_step_duration = \"20000y\"", "p.toml:3:21: min_step_duration must be between 1s and 30days"),
            ("max_step_duration = \"20000y\"", "p.toml:3:21: max_step_duration must be between 1s and 30days"),
            ("false_rollback_rate = 1e-320", "p.toml:3:23: false_rollback_rate must be at least 0.000001 and below 0.5, got 1e-320"),
            ("false_advance_rate = 1e-300", "p.toml:3:22: false_advance_rate must be at least 0.000001 and below 0.5"),
            ("warmup_intervals = 4294967296", "p.toml:3:20: warmup_intervals must be a whole number from 0 to 100"),
            ("min_green_requests_per_step = -1", "p.toml:3:31: min_green_requests_per_step must be a whole number from 0 to 1000000000"),
            ("bake = \"20000y\"", "p.toml:3:8: bake must be between 1s and 30days"),
            ("bake_on_breach = \"alert\"", "p.toml:3:18: bake_on_breach needs bake"),
            ("release_label = \"version\"", "p.toml:3:17: release_label needs release_query"),
            ("release_query = 'max by (version) (build_info)'", "p.toml:3:17: release_query must contain {color}"),
        ] {
            let e = errors_of(&variant("alerts = [", &format!("{line}\nalerts = [")));
            assert_eq!(e.len(), 1, "{line}: {e:?}");
            assert!(e[0].starts_with(needle), "{line}: {e:?}");
        }
    }

    #[test]
    fn huge_values_are_not_echoed_whole_in_messages() {
        let huge = "a b".repeat(200_000);
        for text in [
            variant("api = \"checkout\"", &format!("api = \"{huge}\"")),
            variant(
                "[traffic]\n",
                &format!("[traffic]\ntotal_weight = \"{huge}\"\n"),
            ),
            variant("\"22:00-06:00\"", &format!("\"{huge}\"")),
        ] {
            let e = errors_of(&text);
            assert!(!e.is_empty());
            let total: usize = e.iter().map(|m| m.len()).sum();
            assert!(
                total < 1000,
                "{} bytes of messages: {:?}",
                total,
                &e[0][..200]
            );
        }
    }

    #[test]
    fn durations_are_checked() {
        let e = errors_of(&variant(
            "alerts = [",
            "interval = \"5m\"\nmin_step_duration = \"2m\"\nmax_step_duration = \"1m\"\nstuck_alert_after = \"0s\"\nalerts = [",
        ));
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:4:21: min_step_duration (2m) must be at least interval (5m)")
        );
        assert!(e[1].starts_with("p.toml:5:21: max_step_duration"));
        assert!(e[2]
            .starts_with("p.toml:6:21: stuck_alert_after must be between 1s and 30days, got 0s"));
        let e = errors_of(&variant(
            "alerts = [",
            "interval = \"1 fortnight\"\nalerts = [",
        ));
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("p.toml:3:12: invalid duration"), "{e:?}");
        // A default min_step_duration below an explicit interval points at the interval.
        let e = errors_of(&variant("alerts = [", "interval = \"20m\"\nalerts = ["));
        assert!(
            e[0].starts_with("p.toml:3:12: min_step_duration (10m)"),
            "{e:?}"
        );
    }

    #[test]
    fn schedule_time_zone_and_windows() {
        let e = errors_of(&variant("Europe/Paris", "Mars/Olympus"));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("p.toml:9:12: unknown time zone \"Mars/Olympus\""),
            "{e:?}"
        );
        for bad in [
            "25:00-06:00",
            "22:00",
            "22:0-06:00",
            "22:00-22:00",
            "+1:00-06:00",
            "22:00-06:+5",
        ] {
            let e = errors_of(&variant("22:00-06:00", bad));
            assert_eq!(e.len(), 1, "{bad}");
            assert!(e[0].starts_with("p.toml:10:12: time window"), "{e:?}");
        }
    }

    #[test]
    fn api_name_and_traffic_target() {
        let e = errors_of(&variant("api = \"checkout\"", "api = \"check out\""));
        assert!(e[0].starts_with("p.toml:2:7: api name"), "{e:?}");
        let e = errors_of(&variant(
            "consul_keys = {",
            "haproxy = { backend = \"b\", blue = \"blue\", green = \"green\" }\nconsul_keys = {",
        ));
        assert_eq!(
            e,
            vec!["p.toml:6:11: set either traffic.consul_keys or traffic.haproxy, not both"]
        );
        let e = errors_of(&variant("haproxy/checkout/weights/green", "/haproxy/x"));
        assert_eq!(
            e,
            vec!["p.toml:6:65: Consul key for green must not start with '/'"]
        );
        let e = errors_of(&variant(
            "haproxy/checkout/weights/green",
            "weights/green.json",
        ));
        assert!(e[0].contains("must not end in \".json\""), "{e:?}");
        let e = errors_of(&variant("haproxy/checkout/weights/green", "w/g r"));
        assert!(e[0].contains("contains ' '"), "{e:?}");
        let e = errors_of(&variant("[traffic]\n", "[traffic]\ntotal_weight = 300\n"));
        assert!(
            e[0].starts_with("p.toml:6:16: total_weight must be between 1 and 256"),
            "{e:?}"
        );
    }

    #[test]
    fn traffic_targets_given_as_arrays_are_rejected() {
        // serde took `["a", "b"]` as blue = "a", green = "b".
        let e = errors_of(&variant(
            "consul_keys = { blue = \"haproxy/checkout/weights/blue\", green = \"haproxy/checkout/weights/green\" }",
            "consul_keys = [\"haproxy/checkout/weights/blue\", \"haproxy/checkout/weights/green\"]",
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "p.toml:6:15: invalid type: sequence, expected a table with named keys"
            ),
            "{e:?}"
        );
        let e = errors_of(&variant(
            "consul_keys = { blue = \"haproxy/checkout/weights/blue\", green = \"haproxy/checkout/weights/green\" }",
            "haproxy = [\"b\", \"blue\", \"green\"]",
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("expected a table with named keys"), "{e:?}");
    }

    #[test]
    fn weight_keys_inside_greenlights_own_prefix_are_rejected() {
        // greenlight then wrote "100" over its own state.
        let errors = |prefix: &str| -> Vec<String> {
            let context = PolicyContext {
                channels: None,
                consul_prefix: Some(prefix),
            };
            match parse_policy(GOOD, Path::new("p.toml"), context) {
                Ok(_) => Vec::new(),
                Err(e) => e.iter().map(|e| e.to_string()).collect(),
            }
        };
        let e = errors("haproxy");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:6:24: Consul key for blue \"haproxy/checkout/weights/blue\" is inside greenlight's own prefix \"haproxy\""),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("p.toml:6:65: Consul key for green"),
            "{e:?}"
        );
        assert_eq!(errors("haproxy/checkout/weights/green").len(), 1);
        assert!(errors("hap").is_empty());
        assert!(errors("greenlight").is_empty());
    }

    #[test]
    fn haproxy_backend_names_the_servers_sync_mirrors_consul_keys_to() {
        let keys = "consul_keys = { blue = \"haproxy/checkout/weights/blue\", green = \"haproxy/checkout/weights/green\" }\n";
        let with = variant(
            keys,
            &format!("{keys}haproxy_backend = {{ backend = \"api_checkout\", blue = \"blue\", green = \"green\" }}\n"),
        );
        let p = Policy::from_toml(&with, Path::new("p.toml"), None).unwrap();
        assert_eq!(
            p.traffic.haproxy_backend,
            Some(HaproxyServers {
                backend: "api_checkout".into(),
                blue: "blue".into(),
                green: "green".into()
            })
        );
        let p = Policy::from_toml(GOOD, Path::new("p.toml"), None).unwrap();
        assert_eq!(p.traffic.haproxy_backend, None);

        let e = errors_of(&variant(
            keys,
            &format!("{keys}haproxy_backend = {{ backend = \"api checkout\", blue = \"b\", green = \"b\" }}\n"),
        ));
        assert_eq!(
            e,
            vec!["p.toml:7:31: HAProxy backend name \"api checkout\" must be non-empty and use only letters, digits, '-', '_', '.' and ':'"]
        );
        let e = errors_of(&variant(
            keys,
            &format!(
                "{keys}haproxy_backend = {{ backend = \"b\", blue = \"x\", green = \"x\" }}\n"
            ),
        ));
        assert_eq!(
            e,
            vec!["p.toml:7:56: blue and green must be different servers"]
        );
        let e = errors_of(&variant(
            keys,
            "haproxy = { backend = \"b\", blue = \"blue\", green = \"green\" }\nhaproxy_backend = { backend = \"b\", blue = \"blue\", green = \"green\" }\n",
        ));
        assert_eq!(
            e,
            vec!["p.toml:7:19: traffic.haproxy_backend only applies with traffic.consul_keys"]
        );
    }

    #[test]
    fn alert_channels_must_exist_when_known() {
        let e = errors_of(&variant("[\"oncall\"]", "[\"oncall\", \"pager\"]"));
        assert_eq!(
            e,
            vec!["p.toml:3:21: unknown alert channel \"pager\" (known: oncall)"]
        );
        let text = variant("[\"oncall\"]", "[\"pager\"]");
        assert!(Policy::from_toml(&text, Path::new("p.toml"), None).is_ok());
    }

    #[test]
    fn alert_routes_choose_channels_per_event() {
        let text = GOOD.replacen(
            "alerts = [\"oncall\"]\n",
            "alerts = [\"oncall\"]\n\n[alert_routes]\npromoted = []\nrollback = [\"oncall\", \"oncall\"]\nstuk = [\"oncall\"]\n",
            1,
        );
        let e = errors_of(&text);
        assert!(
            e.iter().any(|m| m.contains("unknown field `stuk`")),
            "{e:?}"
        );
        let text = GOOD.replacen(
            "alerts = [\"oncall\"]\n",
            "alerts = [\"oncall\"]\n\n[alert_routes]\npromoted = []\nrollback = [\"oncall\", \"pager\"]\n",
            1,
        );
        let channels = vec!["oncall".to_string(), "pager".to_string()];
        let p = Policy::from_toml(&text, Path::new("p.toml"), Some(&channels)).unwrap();
        assert_eq!(p.alert_channels("rollback"), ["oncall", "pager"]);
        assert!(p.alert_channels("promoted").is_empty());
        assert_eq!(p.alert_channels("stuck"), ["oncall"]);
        let e = Policy::from_toml(&text, Path::new("p.toml"), Some(&channels[..1])).unwrap_err();
        assert!(
            e[0].message.contains("unknown alert channel \"pager\""),
            "{e:?}"
        );
    }
}
