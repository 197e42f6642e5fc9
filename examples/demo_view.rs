//! Live terminal view of the real-stack demo: polls greenlight's `/api/v1/rollouts` (and
//! VictoriaMetrics for what HAProxy served) every second, shows phase, step, weights, decisions
//! and evidence per API, and at the end prints a summary and draws weights and error rates over
//! time as an SVG picture.
//!
//! `cargo run --release --example demo_view -- --greenlight http://127.0.0.1:8457
//!  --vm http://127.0.0.1:8428 --expect checkout=promoted --expect search=rolled_back
//!  --deadline 8m --out /tmp/demo`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use greenlight::demo::users::Stickiness;
use greenlight::engine::{Action, Phase};
use greenlight::server::RolloutView;
use greenlight::stats::format_e_short;

#[derive(Debug, Parser)]
#[command(about = "Watch greenlight's rollouts live; summary and SVG picture at the end")]
struct Args {
    /// greenlight's HTTP address (`listen` in its config).
    #[arg(long)]
    greenlight: String,
    /// VictoriaMetrics, for the traffic and error rates HAProxy saw (optional).
    #[arg(long)]
    vm: Option<String>,
    /// Expected final phase of an API, e.g. `checkout=promoted`, `search=rolled_back`.
    #[arg(long = "expect", value_parser = parse_expect, required = true)]
    expect: Vec<(String, Phase)>,
    /// Give up after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    deadline: Duration,
    /// Directory for `summary.txt` and `demo.svg`.
    #[arg(long)]
    out: PathBuf,
    /// A line shown above the live view (repeatable), e.g. what the demo started.
    #[arg(long)]
    note: Vec<String>,
    /// A sticky API's per-user statistics file written by `demo_load --stats`, e.g.
    /// `checkout=/tmp/demo/checkout-users.json`; the summary then also requires that no user
    /// flipped colour.
    #[arg(long = "sticky", value_parser = parse_sticky)]
    sticky: Vec<(String, PathBuf)>,
}

fn parse_sticky(text: &str) -> Result<(String, PathBuf), String> {
    let (api, file) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected API=FILE"))?;
    Ok((api.to_string(), PathBuf::from(file)))
}

/// The per-user statistics of `api`'s load, when it is a sticky API and the file is readable.
fn stickiness(args: &Args, api: &str) -> Option<Stickiness> {
    let (_, file) = args.sticky.iter().find(|(a, _)| a == api)?;
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
}

fn parse_expect(text: &str) -> Result<(String, Phase), String> {
    let (api, phase) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected API=PHASE"))?;
    let phase = match phase {
        "promoted" => Phase::Promoted,
        "rolled_back" => Phase::RolledBack,
        other => return Err(format!("{other:?}: expected promoted or rolled_back")),
    };
    Ok((api.to_string(), phase))
}

/// What HAProxy served for one API over the last 10 seconds, per colour.
#[derive(Debug, Clone, Copy, Default)]
struct Served {
    /// Requests per second.
    blue_rps: f64,
    green_rps: f64,
    /// Share of 5xx answers.
    blue_errors: Option<f64>,
    green_errors: Option<f64>,
}

/// One point of the picture.
#[derive(Debug, Clone, Copy)]
struct Point {
    t: f64,
    green_percent: f64,
    served: Option<Served>,
}

/// A decision worth a line: anything but a hold.
#[derive(Debug, Clone)]
struct Move {
    t: f64,
    api: String,
    action: Action,
    green_percent: f64,
    reason: String,
}

struct Vm {
    client: reqwest::Client,
    url: String,
}

impl Vm {
    /// `sum by (server) (…)` as server → value.
    async fn by_server(&self, query: &str) -> Option<BTreeMap<String, f64>> {
        let url = format!("{}/api/v1/query", self.url.trim_end_matches('/'));
        let body: serde_json::Value = self
            .client
            .get(url)
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let mut out = BTreeMap::new();
        for r in body["data"]["result"].as_array()? {
            let server = r["metric"]["server"].as_str().unwrap_or("").to_string();
            let value: f64 = r["value"][1].as_str()?.parse().ok()?;
            out.insert(server, value);
        }
        Some(out)
    }

    async fn served(&self, api: &str) -> Option<Served> {
        let all = self
            .by_server(&format!(
                "sum by (server) (rate(haproxy_server_http_responses_total{{proxy=\"api_{api}\"}}[10s]))"
            ))
            .await?;
        let bad = self
            .by_server(&format!(
                "sum by (server) (rate(haproxy_server_http_responses_total{{proxy=\"api_{api}\",code=\"5xx\"}}[10s]))"
            ))
            .await
            .unwrap_or_default();
        let rps = |s: &str| all.get(s).copied().unwrap_or(0.0);
        let errors = |s: &str| {
            let n = rps(s);
            (n > 0.0).then(|| bad.get(s).copied().unwrap_or(0.0) / n)
        };
        Some(Served {
            blue_rps: rps("blue"),
            green_rps: rps("green"),
            blue_errors: errors("blue"),
            green_errors: errors("green"),
        })
    }

    /// Everything green has served since HAProxy started: (requests, 5xx).
    async fn green_totals(&self, api: &str) -> Option<(f64, f64)> {
        let q = |code: &str| {
            format!("sum by (server) (haproxy_server_http_responses_total{{proxy=\"api_{api}\",server=\"green\"{code}}})")
        };
        let all = self.by_server(&q("")).await?;
        let bad = self.by_server(&q(",code=\"5xx\"")).await?;
        Some((*all.get("green")?, *bad.get("green")?))
    }
}

struct View {
    args: Args,
    client: reqwest::Client,
    vm: Option<Vm>,
    started: Instant,
    /// Wall-clock time of `started`, to place decisions on the time axis.
    started_at: jiff::Timestamp,
    tty: bool,
    rollouts: BTreeMap<String, RolloutView>,
    served: BTreeMap<String, Served>,
    points: BTreeMap<String, Vec<Point>>,
    moves: Vec<Move>,
    /// Newest decision time already listed, per API.
    seen: BTreeMap<String, jiff::Timestamp>,
    error: Option<String>,
}

impl View {
    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    async fn poll(&mut self) {
        let url = format!(
            "{}/api/v1/rollouts",
            self.args.greenlight.trim_end_matches('/')
        );
        let got: Result<Vec<RolloutView>, String> = async {
            let mut req = self.client.get(&url);
            // With sign-in configured (demo/run with DEMO_TOKEN), the API wants the token.
            if let Ok(token) = std::env::var("GREENLIGHT_TOKEN") {
                req = req.bearer_auth(token.trim());
            }
            let r = req.send().await.map_err(|e| e.to_string())?;
            r.json().await.map_err(|e| e.to_string())
        }
        .await;
        match got {
            Ok(views) => {
                self.error = None;
                for v in views {
                    self.rollouts.insert(v.api.clone(), v);
                }
            }
            Err(e) => self.error = Some(format!("greenlight not answering yet ({e})")),
        }
        let t = self.elapsed();
        let apis: Vec<String> = self.args.expect.iter().map(|(a, _)| a.clone()).collect();
        for api in apis {
            let served = match &self.vm {
                Some(vm) => vm.served(&api).await,
                None => None,
            };
            if let Some(s) = served {
                self.served.insert(api.clone(), s);
            }
            let Some(view) = self.rollouts.get(&api) else {
                continue;
            };
            self.points.entry(api.clone()).or_default().push(Point {
                t,
                green_percent: view.green_percent,
                served,
            });
            let newest = self.seen.get(&api).copied();
            for r in &view.history {
                if newest.is_some_and(|n| r.at <= n) || r.action == Action::Hold {
                    continue;
                }
                let total = (r.weights.blue + r.weights.green).max(1);
                let m = Move {
                    t: (r.at - self.started_at).as_secs_f64().max(0.0),
                    api: api.clone(),
                    action: r.action,
                    green_percent: 100.0 * f64::from(r.weights.green) / f64::from(total),
                    reason: r.reason.clone(),
                };
                if !self.tty {
                    println!("{}", move_line(&m));
                }
                self.moves.push(m);
            }
            if let Some(last) = view.history.last() {
                self.seen.insert(api.clone(), last.at);
            }
        }
    }

    /// Whether every API reached a final phase (and the weights were confirmed applied).
    fn finished(&self) -> bool {
        self.args.expect.iter().all(|(api, _)| {
            self.rollouts.get(api).is_some_and(|v| {
                matches!(v.phase, Phase::Promoted | Phase::RolledBack) && v.applying_from.is_none()
            })
        })
    }

    fn screen(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "greenlight real-stack demo — {} elapsed (deadline {})   Ctrl-C stops everything\n",
            clock(self.elapsed()),
            clock(self.args.deadline.as_secs_f64())
        );
        for note in &self.args.note {
            let _ = writeln!(s, "  {note}");
        }
        if !self.args.note.is_empty() {
            let _ = writeln!(s);
        }
        if let Some(e) = &self.error {
            let _ = writeln!(s, "  {e}\n");
        }
        for (api, _) in &self.args.expect {
            let Some(v) = self.rollouts.get(api) else {
                let _ = writeln!(s, "{api:<9} waiting for greenlight's first decision\n");
                continue;
            };
            let bar_len = 30;
            let filled = ((v.green_percent / 100.0) * bar_len as f64).round() as usize;
            let _ = writeln!(
                s,
                "{api:<9} {:<12} step {}/{}   green {:>5.1} %  [{}{}]",
                v.phase.as_str().to_uppercase(),
                (v.step + 1).min(v.steps.len()),
                v.steps.len(),
                v.green_percent,
                "#".repeat(filled),
                ".".repeat(bar_len - filled.min(bar_len)),
            );
            if let Some(sv) = self.served.get(api) {
                let total = sv.blue_rps + sv.green_rps;
                let share = if total > 0.0 {
                    100.0 * sv.green_rps / total
                } else {
                    0.0
                };
                let _ = writeln!(
                    s,
                    "  HAProxy   {:>5.0} req/s, {:>5.1} % to green   5xx: blue {}  green {}",
                    total,
                    share,
                    pct(sv.blue_errors),
                    pct(sv.green_errors)
                );
            }
            if let Some(st) = stickiness(&self.args, api) {
                let _ = writeln!(s, "  sticky    {}", st.describe());
            }
            if let Some(d) = &v.last_decision {
                let _ = writeln!(s, "  decision  {}: {}", d.action.as_str(), d.reason);
            }
            for e in &v.evidence {
                let _ = writeln!(
                    s,
                    "  evidence  {:<14} against green E = {:>9} (rollback at {:.0})   for green E = {:>9} (advance at {:.0})",
                    e.stream,
                    format_e_short(e.rollback_log_e),
                    e.rollback_threshold,
                    format_e_short(e.advance_log_e),
                    e.advance_threshold
                );
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "recent decisions:");
        for m in self.moves.iter().rev().take(8).rev() {
            let _ = writeln!(s, "  {}", move_line(m));
        }
        s
    }

    fn draw(&self) {
        if self.tty {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\x1b[H\x1b[2J{}", self.screen());
            let _ = out.flush();
        }
    }

    /// The summary lines and whether every API ended as expected.
    async fn summary(&self) -> (String, bool) {
        let mut s = String::new();
        let mut ok = true;
        for (api, want) in &self.args.expect {
            let Some(v) = self.rollouts.get(api) else {
                ok = false;
                let _ = writeln!(s, "{api}: no decision seen (expected {})", want.as_str());
                continue;
            };
            // From the start of the rollout to its final decision (holds follow it).
            let last = v
                .history
                .iter()
                .rev()
                .find(|r| matches!(r.action, Action::Promote | Action::Rollback))
                .map(|r| r.at)
                .or(v.last_decision.as_ref().map(|d| d.at));
            let took = match (v.rollout_started_at, last) {
                (Some(a), Some(b)) => clock((b - a).as_secs_f64()),
                _ => "?".into(),
            };
            let green = match &self.vm {
                Some(vm) => vm.green_totals(api).await,
                None => None,
            }
            .or_else(|| {
                // Without VictoriaMetrics: what greenlight counted (warm-up windows excluded).
                v.evidence
                    .iter()
                    .find(|e| e.edge.is_none())
                    .map(|e| (e.total.green.requests, e.total.green.bad))
            });
            let green = green
                .map(|(n, bad)| format!("green served {n:.0} requests, {bad:.0} of them 5xx"))
                .unwrap_or_default();
            let line = match v.phase {
                Phase::Promoted => format!(
                    "{api}: PROMOTED to 100 % after {took}, through steps {} ({} decisions); {green}",
                    steps(&v.steps),
                    v.revision
                ),
                Phase::RolledBack => {
                    let at = v
                        .history
                        .iter()
                        .rev()
                        .find(|r| r.action == Action::Rollback)
                        .map(|r| v.steps.get(r.step).copied().unwrap_or(0.0))
                        .unwrap_or(0.0);
                    format!(
                        "{api}: ROLLED BACK after {took} at the {at} % step; {green}\n  reason: {}",
                        v.reason.as_deref().unwrap_or("?")
                    )
                }
                other => format!("{api}: still {} after {took}", other.as_str()),
            };
            let met = v.phase == *want;
            ok &= met;
            let _ = writeln!(
                s,
                "{line}\n  expected {}: {}",
                want.as_str(),
                if met { "yes" } else { "NO" }
            );
            if self.args.sticky.iter().any(|(a, _)| a == api) {
                // A promoted sticky canary only ever adds users to green.
                let sticky = stickiness(&self.args, api);
                let kept = sticky
                    .as_ref()
                    .is_some_and(|st| st.flipped == 0 && st.seen > 0);
                ok &= kept || v.phase == Phase::RolledBack;
                let _ = writeln!(
                    s,
                    "  sticky: {}\n  no user flipped colour: {}",
                    sticky.map_or("no per-user statistics".into(), |st| st.describe()),
                    if kept { "yes" } else { "NO" }
                );
            }
        }
        (s, ok)
    }

    fn svg(&self) -> String {
        svg(&self.args.expect, &self.points, &self.moves)
    }
}

fn steps(steps: &[f64]) -> String {
    let s: Vec<String> = steps.iter().map(|p| format!("{p}")).collect();
    s.join(" → ") + " %"
}

fn move_line(m: &Move) -> String {
    format!(
        "[{}] {:<9} {:<8} → green {:>5.1} %  {}",
        clock(m.t),
        m.api,
        m.action.as_str(),
        m.green_percent,
        m.reason
    )
}

fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

fn pct(v: Option<f64>) -> String {
    v.map(|r| format!("{:>5.1} %", 100.0 * r))
        .unwrap_or_else(|| "    – ".into())
}

/// Green weight (left axis, 0–100 %) and 5xx share per colour (right axis) over time, one panel
/// per API, decisions as vertical marks.
fn svg(apis: &[(String, Phase)], points: &BTreeMap<String, Vec<Point>>, moves: &[Move]) -> String {
    const W: f64 = 900.0;
    const PANEL: f64 = 260.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 70.0;
    const TOP: f64 = 40.0;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = PANEL - 70.0;
    let h = TOP + PANEL * apis.len() as f64 + 20.0;
    let t_max = points
        .values()
        .flat_map(|p| p.last())
        .map(|p| p.t)
        .fold(10.0_f64, f64::max);
    let err_max = points
        .values()
        .flatten()
        .filter_map(|p| p.served)
        .flat_map(|s| [s.blue_errors, s.green_errors])
        .flatten()
        .fold(0.02_f64, f64::max)
        .min(1.0);
    let err_max = (err_max * 100.0 / 5.0).ceil() * 5.0 / 100.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">greenlight demo: green's weight and 5xx share over time</text>"#
    );
    for (i, (api, _)) in apis.iter().enumerate() {
        let y0 = TOP + PANEL * i as f64 + 20.0;
        let x = |t: f64| LEFT + plot_w * t / t_max;
        let y_pct = |p: f64| y0 + plot_h * (1.0 - p / 100.0);
        let y_err = |e: f64| y0 + plot_h * (1.0 - (e / err_max).min(1.0));
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{api}</text>"#,
            y0 - 6.0
        );
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##
        );
        for p in [0.0, 25.0, 50.0, 75.0, 100.0] {
            let y = y_pct(p);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end" fill="#2a7">{p:.0} %</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0
            );
            let e = err_max * p / 100.0;
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{:.1}" fill="#c33">{:.1} %</text>"##,
                LEFT + plot_w + 6.0,
                y + 4.0,
                100.0 * e
            );
        }
        let ticks = ((t_max / 30.0).ceil() as usize).max(1);
        for k in 0..=ticks {
            let t = (k as f64 * 30.0).min(t_max);
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
                x(t),
                y0 + plot_h + 16.0,
                clock(t)
            );
        }
        for m in moves.iter().filter(|m| &m.api == api) {
            let colour = match m.action {
                Action::Rollback => "#c33",
                Action::Promote => "#2a7",
                _ => "#999",
            };
            let _ = writeln!(
                s,
                r#"<line x1="{0:.1}" x2="{0:.1}" y1="{y0}" y2="{1:.1}" stroke="{colour}" stroke-dasharray="3,3"/><text x="{0:.1}" y="{2:.1}" font-size="10" fill="{colour}" transform="rotate(-90 {0:.1} {2:.1})">{3}</text>"#,
                x(m.t),
                y0 + plot_h,
                y0 + plot_h - 4.0,
                m.action.as_str()
            );
        }
        let pts = points.get(api).map(Vec::as_slice).unwrap_or(&[]);
        let mut weight = String::new();
        let mut last: Option<f64> = None;
        for p in pts {
            if let Some(prev) = last {
                let _ = write!(weight, "{:.1},{:.1} ", x(p.t), y_pct(prev));
            }
            let _ = write!(weight, "{:.1},{:.1} ", x(p.t), y_pct(p.green_percent));
            last = Some(p.green_percent);
        }
        let _ = writeln!(
            s,
            r##"<polyline points="{weight}" fill="none" stroke="#2a7" stroke-width="2.5"/>"##
        );
        for (colour, pick) in [
            (
                "#36c",
                (|s: Served| s.blue_errors) as fn(Served) -> Option<f64>,
            ),
            ("#c33", |s: Served| s.green_errors),
        ] {
            let line: String = pts
                .iter()
                .filter_map(|p| Some((p.t, pick(p.served?)?)))
                .map(|(t, e)| format!("{:.1},{:.1} ", x(t), y_err(e)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.2"/>"#
            );
        }
        let ly = y0 + plot_h + 34.0;
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{ly}"><tspan fill="#2a7">━ green weight (left axis)</tspan>   <tspan fill="#c33">━ green 5xx share (right axis)</tspan>   <tspan fill="#36c">━ blue 5xx share (right axis)</tspan>   <tspan fill="#555">time since the demo started</tspan></text>"##
        );
    }
    s.push_str("</svg>\n");
    s
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("error: cannot create {}: {e}", args.out.display());
        std::process::exit(2);
    }
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: HTTP client: {e}");
            std::process::exit(1);
        }
    };
    let vm = args.vm.clone().map(|url| Vm {
        client: client.clone(),
        url,
    });
    let deadline = args.deadline;
    let mut view = View {
        args,
        client,
        vm,
        started: Instant::now(),
        started_at: jiff::Timestamp::now(),
        tty: std::io::stdout().is_terminal(),
        rollouts: BTreeMap::new(),
        served: BTreeMap::new(),
        points: BTreeMap::new(),
        moves: Vec::new(),
        seen: BTreeMap::new(),
        error: None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let interrupted = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break true,
            _ = tick.tick() => {}
        }
        view.poll().await;
        view.draw();
        if view.finished() || view.started.elapsed() > deadline {
            break false;
        }
    };
    let (summary, ok) = view.summary().await;
    let svg_path = view.args.out.join("demo.svg");
    let picture = match std::fs::write(&svg_path, view.svg()) {
        Ok(()) => format!("Picture of weights and error rates: {}", svg_path.display()),
        Err(e) => format!("Could not write {}: {e}", svg_path.display()),
    };
    let outcome = if interrupted {
        "Interrupted."
    } else if ok {
        "Every API ended as expected."
    } else if view.finished() {
        "An API did not end as expected."
    } else {
        "Deadline reached before every API finished."
    };
    let text = format!(
        "\n=== Summary ({} elapsed) ===\n{summary}{outcome}\n{picture}\n",
        clock(view.elapsed())
    );
    let _ = std::fs::write(view.args.out.join("summary.txt"), &text);
    print!("{text}");
    std::process::exit(if interrupted {
        130
    } else if ok {
        0
    } else {
        1
    });
}
