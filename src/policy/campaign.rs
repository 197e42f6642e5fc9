//! Campaign files: which APIs a migration moves, in which waves, how many at once, when, and
//! what a rollback means. Parsed and validated like policies (every problem at `file:line:col`),
//! then resolved against the loaded policies ([`Campaign::resolve`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::labels::{is_label_text, RawLabels};
use super::load::toml_files;
use super::located::{parse_toml, shown, Errors};
use super::raw::RawSchedule;
use super::read::read_text;
use super::validate::{is_api_name, validate_alerts, validate_schedule};
use super::values::Table;
use super::{Policy, PolicyError, Schedule};

/// Most rollouts a campaign may run at once.
pub const MAX_CONCURRENT: i64 = 1000;

/// What a rolled-back API means for its campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRollback {
    /// Stop the campaign: no further API is started (running ones go on by their own policy).
    Stop,
    /// Count the API as skipped and go on with the next.
    Skip,
}

/// Where something is written in a campaign file (1-based; 0 when not written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Loc {
    pub line: usize,
    pub col: usize,
}

/// Which APIs a wave takes: the explicit ones in their order, then every other API whose
/// policy name matches a glob or whose labels include all of `labels`, by name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Wave {
    pub name: String,
    /// Most rollouts of this wave at once (never more than the campaign's). `None`: the
    /// campaign's.
    pub max_concurrent: Option<usize>,
    pub apis: Vec<(String, Loc)>,
    /// Globs on API names (`*` any run of characters, `?` one character).
    pub globs: Vec<(String, Loc)>,
    /// Label selector: a policy is taken when it carries every one of these labels.
    pub labels: BTreeMap<String, String>,
    pub at: Loc,
}

/// One validated campaign file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Campaign {
    /// Unique across campaign files; part of Consul keys, alerts and metric labels.
    pub name: String,
    /// Where `name` is written.
    pub name_at: Loc,
    pub source: Option<PathBuf>,
    /// Most rollouts running at once across the campaign. Default 1.
    pub max_concurrent: usize,
    pub on_rollback: OnRollback,
    /// Optional windows: outside them no API is started (running ones go on).
    pub schedule: Option<Schedule>,
    /// Alert channels (from the daemon config) that receive the campaign's events.
    pub alerts: Vec<String>,
    /// In order: a wave starts once every API of the previous one is done.
    pub waves: Vec<Wave>,
}

/// The raw selector fields, shared by the top level (one implicit wave) and `[[wave]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    apis: Vec<Spanned<String>>,
    #[serde(default, rename = "match")]
    globs: Vec<Spanned<String>>,
    #[serde(default)]
    labels: Option<RawLabels>,
    #[serde(default)]
    max_concurrent: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCampaign {
    name: Spanned<String>,
    #[serde(default)]
    max_concurrent: Option<Spanned<i64>>,
    #[serde(default)]
    on_rollback: Option<Spanned<OnRollback>>,
    #[serde(default)]
    schedule: Option<Spanned<Table<RawSchedule>>>,
    #[serde(default)]
    alerts: Vec<Spanned<String>>,
    #[serde(default)]
    apis: Vec<Spanned<String>>,
    #[serde(default, rename = "match")]
    globs: Vec<Spanned<String>>,
    #[serde(default)]
    labels: Option<RawLabels>,
    #[serde(default, rename = "wave")]
    waves: Vec<Spanned<Table<RawWave>>>,
}

impl Campaign {
    /// Parses and validates a campaign file's text (not yet against policies). With
    /// `channels`, every alert name must be one of them.
    pub fn from_toml(
        text: &str,
        file: &Path,
        channels: Option<&[String]>,
    ) -> Result<Campaign, Vec<PolicyError>> {
        let mut errors = Errors::new(text, file);
        let Some(raw) = parse_toml::<RawCampaign>(text, &mut errors) else {
            return Err(errors.into_sorted());
        };
        let campaign = raw.validate(file, channels, &mut errors);
        if errors.is_empty() {
            Ok(campaign)
        } else {
            Err(errors.into_sorted())
        }
    }

    /// The APIs of each wave, in start order, taken from `policies`. Every explicit API must
    /// have a policy, every wave must select at least one API, an API belongs to one wave only
    /// (a glob or label match already taken by an earlier wave is left to it), and a campaign's
    /// API must wait for a start (`auto_start = false`), else it would not wait for its turn.
    pub fn resolve<'a>(
        &self,
        policies: impl IntoIterator<Item = &'a Policy>,
    ) -> Result<Vec<Vec<String>>, Vec<PolicyError>> {
        let by_api: BTreeMap<&str, &Policy> =
            policies.into_iter().map(|p| (p.api.as_str(), p)).collect();
        let file = self.source.clone().unwrap_or_default();
        let error = |at: Loc, message: String| PolicyError {
            file: file.clone(),
            line: at.line,
            col: at.col,
            message,
        };
        let mut errors = Vec::new();
        let mut taken: BTreeSet<&str> = BTreeSet::new();
        let mut waves = Vec::new();
        for wave in &self.waves {
            let mut apis: Vec<String> = Vec::new();
            for (api, at) in &wave.apis {
                match by_api.get(api.as_str()) {
                    None => errors.push(error(
                        *at,
                        format!("unknown API {}: no policy has this api", shown(api)),
                    )),
                    Some(_) if taken.contains(api.as_str()) => errors.push(error(
                        *at,
                        format!("API {} is already in an earlier wave", shown(api)),
                    )),
                    Some(p) => {
                        if p.auto_start {
                            errors.push(error(*at, auto_start_message(api)));
                        }
                        taken.insert(&p.api);
                        apis.push(api.clone());
                    }
                }
            }
            let selects = !wave.globs.is_empty() || !wave.labels.is_empty();
            if selects {
                for (api, p) in &by_api {
                    if taken.contains(api) {
                        continue;
                    }
                    let by_glob = wave.globs.iter().any(|(g, _)| glob_matches(g, api));
                    let by_label = !wave.labels.is_empty()
                        && wave
                            .labels
                            .iter()
                            .all(|(k, v)| p.labels.get(k).is_some_and(|x| x == v));
                    if by_glob || by_label {
                        if p.auto_start {
                            errors.push(error(wave.at, auto_start_message(api)));
                        }
                        taken.insert(api);
                        apis.push(api.to_string());
                    }
                }
            }
            if apis.is_empty() && errors.is_empty() {
                errors.push(error(
                    wave.at,
                    format!(
                        "wave {} selects no API (no policy matches its apis, match or labels)",
                        shown(&wave.name)
                    ),
                ));
            }
            waves.push(apis);
        }
        if errors.is_empty() {
            Ok(waves)
        } else {
            Err(errors)
        }
    }
}

fn auto_start_message(api: &str) -> String {
    format!(
        "API {} starts on its own (auto_start = true in its policy); a campaign's API must \
         have auto_start = false so that it waits for its turn",
        shown(api)
    )
}

/// Whether `name` matches `glob` (`*`: any run of characters, `?`: one character).
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let (g, n): (Vec<char>, Vec<char>) = (glob.chars().collect(), name.chars().collect());
    let (mut gi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == n[ni]) {
            gi += 1;
            ni += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ni));
            gi += 1;
        } else if let Some((sg, sn)) = star {
            gi = sg + 1;
            ni = sn + 1;
            star = Some((sg, sn + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

impl RawCampaign {
    fn validate(
        self,
        file: &Path,
        channels: Option<&[String]>,
        errors: &mut Errors<'_>,
    ) -> Campaign {
        let loc = |errors: &Errors<'_>, span: std::ops::Range<usize>| {
            let (line, col) = errors.location(span);
            Loc { line, col }
        };
        let name = self.name.get_ref().clone();
        if !is_api_name(&name) {
            errors.at(
                self.name.span(),
                format!(
                    "campaign name {} must be non-empty and use only letters, digits, '_' and '-' \
                     (it becomes part of Consul keys)",
                    shown(&name)
                ),
            );
        }
        let max_concurrent =
            concurrency(self.max_concurrent.as_ref(), "max_concurrent", errors).unwrap_or(1);
        let on_rollback = self
            .on_rollback
            .map(|o| *o.get_ref())
            .unwrap_or(OnRollback::Stop);
        let schedule = self
            .schedule
            .as_ref()
            .and_then(|s| validate_schedule(s, errors));
        let alerts = validate_alerts(&self.alerts, channels, errors);
        let top = RawWave {
            name: None,
            apis: self.apis,
            globs: self.globs,
            labels: self.labels,
            max_concurrent: None,
        };
        let top_selects = !top.apis.is_empty() || !top.globs.is_empty() || top.labels.is_some();
        let mut waves = Vec::new();
        if self.waves.is_empty() {
            let at = loc(errors, self.name.span());
            match wave(top, "all".into(), at, max_concurrent, errors) {
                Some(w) => waves.push(w),
                None => errors.at(
                    self.name.span(),
                    "a campaign needs apis, match or labels, or [[wave]] tables",
                ),
            }
        } else {
            if top_selects {
                errors.at(
                    self.name.span(),
                    "give either top-level apis/match/labels (one wave) or [[wave]] tables, not both",
                );
            }
            let mut names: BTreeSet<String> = BTreeSet::new();
            for (i, raw) in self.waves.into_iter().enumerate() {
                let at = loc(errors, raw.span());
                let span = raw.span();
                let raw = raw.into_inner().0;
                let wave_name = match &raw.name {
                    Some(n) => {
                        if !is_api_name(n.get_ref()) {
                            errors.at(
                                n.span(),
                                format!(
                                    "wave name {} must use only letters, digits, '_' and '-'",
                                    shown(n.get_ref())
                                ),
                            );
                        }
                        n.get_ref().clone()
                    }
                    None => format!("wave-{}", i + 1),
                };
                if !names.insert(wave_name.clone()) {
                    errors.at(
                        span.clone(),
                        format!("wave {} is defined twice", shown(&wave_name)),
                    );
                }
                match wave(raw, wave_name, at, max_concurrent, errors) {
                    Some(w) => waves.push(w),
                    None => errors.at(span, "a [[wave]] needs apis, match or labels"),
                }
            }
        }
        Campaign {
            name,
            name_at: loc(errors, self.name.span()),
            source: Some(file.to_path_buf()),
            max_concurrent,
            on_rollback,
            schedule,
            alerts,
            waves,
        }
    }
}

/// One wave from its raw fields; `None` when it selects nothing at all.
fn wave(
    raw: RawWave,
    name: String,
    at: Loc,
    campaign_max: usize,
    errors: &mut Errors<'_>,
) -> Option<Wave> {
    let loc = |errors: &Errors<'_>, span: std::ops::Range<usize>| {
        let (line, col) = errors.location(span);
        Loc { line, col }
    };
    let mut apis: Vec<(String, Loc)> = Vec::new();
    for a in &raw.apis {
        let api = a.get_ref();
        if !is_api_name(api) {
            errors.at(a.span(), format!("{} is not an API name", shown(api)));
        } else if apis.iter().any(|(x, _)| x == api) {
            errors.at(a.span(), format!("API {} is listed twice", shown(api)));
        } else {
            apis.push((api.clone(), loc(errors, a.span())));
        }
    }
    let mut globs = Vec::new();
    for g in &raw.globs {
        let glob = g.get_ref();
        let ok = !glob.is_empty()
            && glob
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '*' | '?'));
        if ok {
            globs.push((glob.clone(), loc(errors, g.span())));
        } else {
            errors.at(
                g.span(),
                format!(
                    "match {}: a glob uses letters, digits, '_', '-', '*' (any run) and '?' (one character)",
                    shown(glob)
                ),
            );
        }
    }
    let mut labels = BTreeMap::new();
    if let Some(raw_labels) = &raw.labels {
        if raw_labels.get_ref().is_empty() {
            errors.at(raw_labels.span(), "labels must name at least one label");
        }
        for (k, v) in raw_labels.get_ref().iter() {
            if is_label_text(k) && is_label_text(v.get_ref()) {
                labels.insert(k.clone(), v.get_ref().clone());
            } else {
                errors.at(
                    v.span(),
                    format!(
                        "label {} = {} is not a valid label",
                        shown(k),
                        shown(v.get_ref())
                    ),
                );
            }
        }
    }
    let max_concurrent = concurrency(raw.max_concurrent.as_ref(), "max_concurrent", errors);
    if let (Some(m), Some(raw_m)) = (max_concurrent, &raw.max_concurrent) {
        if m > campaign_max {
            errors.at(
                raw_m.span(),
                format!(
                    "wave max_concurrent ({m}) exceeds the campaign's max_concurrent ({campaign_max})"
                ),
            );
        }
    }
    let selects = !raw.apis.is_empty() || !raw.globs.is_empty() || raw.labels.is_some();
    selects.then_some(Wave {
        name,
        max_concurrent,
        apis,
        globs,
        labels,
        at,
    })
}

fn concurrency(raw: Option<&Spanned<i64>>, field: &str, errors: &mut Errors<'_>) -> Option<usize> {
    let raw = raw?;
    let v = *raw.get_ref();
    if (1..=MAX_CONCURRENT).contains(&v) {
        usize::try_from(v).ok()
    } else {
        errors.at(
            raw.span(),
            format!("{field} must be between 1 and {MAX_CONCURRENT}, got {v}"),
        );
        None
    }
}

/// The campaigns of a directory, and every problem found.
#[derive(Debug, Default)]
pub struct CampaignReport {
    pub campaigns: Vec<Campaign>,
    pub errors: Vec<PolicyError>,
}

/// Loads every `*.toml` file of `dir` (sorted by name), checking names are unique and, with
/// `policies`, resolving each campaign against them (a campaign that does not resolve is
/// reported and left out). A directory that does not exist holds no campaigns.
pub fn load_campaigns(
    dir: &Path,
    channels: Option<&[String]>,
    policies: Option<&[&Policy]>,
) -> CampaignReport {
    let mut report = CampaignReport::default();
    if !dir.exists() {
        return report;
    }
    let files = match toml_files(dir) {
        Ok(files) => files,
        Err(e) => {
            report.errors.push(e);
            return report;
        }
    };
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        let campaign = read_text(&file)
            .map_err(|e| vec![e])
            .and_then(|text| Campaign::from_toml(&text, &file, channels));
        let campaign = match campaign {
            Ok(c) => c,
            Err(errors) => {
                report.errors.extend(errors);
                continue;
            }
        };
        if let Some(first) = seen.get(&campaign.name) {
            report.errors.push(PolicyError {
                file: file.clone(),
                line: campaign.name_at.line,
                col: campaign.name_at.col,
                message: format!(
                    "campaign {} is already defined in {}; campaign names must be unique",
                    shown(&campaign.name),
                    first.display()
                ),
            });
            continue;
        }
        seen.insert(campaign.name.clone(), file);
        if let Some(policies) = policies {
            if let Err(errors) = campaign.resolve(policies.iter().copied()) {
                report.errors.extend(errors);
                continue;
            }
        }
        report.campaigns.push(campaign);
    }
    report
}

#[cfg(test)]
mod tests;
