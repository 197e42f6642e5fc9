//! Decision-quality benchmark: greenlight against a Flagger-style and a Kayenta-style judge and
//! Wald's SPRT oracle, on the same synthetic worlds and step schedule (bench/policy.toml).
//! greenlight runs through the real daemon shell (`sim::night::ShellRollout`: stored state and
//! codec, weight reconciliation, window choice, warm-up), without faults.
//!
//! `cargo bench --bench quality [-- --seeds N] [-- --quick] [-- --policy FILE]` writes
//! `bench/results/quality.{md,csv,svg}`. Each (scenario, seed) is run once per judge, each in
//! its own world built from that seed: the same seed and the same green shares give the same
//! draws, so the judges meet identical traffic until their decisions differ.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use greenlight::policy::{CheckKind, Policy};
use greenlight::sim::judges::{
    oracle_stream, run_judge, Flagger, Greenlight, Judge, JudgeRun, Kayenta, Oracle, RunSettings,
    Verdict,
};
use greenlight::sim::{default_start, Scenario, World};
use greenlight::stats::estimate_dispersion;
use jiff::SignedDuration;

const JUDGES: [&str; 5] = [
    "greenlight",
    "flagger",
    "kayenta",
    "oracle",
    "oracle at tolerance",
];

/// One row of the scenario suite.
struct Case {
    name: &'static str,
    /// Scenario items (see `greenlight simulate --scenario`).
    items: &'static str,
    /// Green's log-normal latency σ while regressed (blue: 0.6).
    green_sigma: f64,
    /// Whether green is worse than blue (detection) or not (false rollbacks).
    regression: bool,
    /// For the delay plot: the error ratio.
    error_ratio: Option<f64>,
}

fn suite() -> Vec<Case> {
    let case = |name, items, regression, error_ratio| Case {
        name,
        items,
        green_sigma: 0.6,
        regression,
        error_ratio,
    };
    vec![
        case("healthy (A/A)", "healthy", false, None),
        case("healthy, 5 req/s overnight", "rps=5", false, None),
        case(
            "healthy, overdispersed errors (CV 0.3)",
            "overdispersion=0.3",
            false,
            None,
        ),
        case(
            "healthy, metrics outage 20m–50m",
            "outage=20m+30m",
            false,
            None,
        ),
        case("healthy, diurnal load", "diurnal", false, None),
        // Green 5 % worse: inside every tolerance in use, so a rollback is a false one.
        case("acceptable: errors ×1.05", "errors=1.05x", false, None),
        case("errors ×1.25", "errors=1.25x", true, Some(1.25)),
        case("errors ×1.5", "errors=1.5x", true, Some(1.5)),
        case("errors ×2", "errors=2x", true, Some(2.0)),
        case("errors ×5", "errors=5x", true, Some(5.0)),
        case("errors ×2, 5 req/s", "errors=2x,rps=5", true, None),
        case(
            "errors ×2, overdispersed",
            "errors=2x,overdispersion=0.3",
            true,
            None,
        ),
        case("latency ×1.2 (p90 edge ×1.65)", "latency=1.2x", true, None),
        // Healthy at 1 %, 5 % and 10 %; the regression appears only from step 3 (25 %) on, where
        // the advance evidence gathered so far no longer speaks for green.
        case(
            "errors ×3 from step 3 (25 %)",
            "errors=3x,from-step=3",
            true,
            None,
        ),
        // Past the tolerance (1.1) but not the advance tolerance (1.5), from step 3 on: slow for
        // the rollback test, and the advance evidence of 25 % and 50 % must come from there.
        case(
            "errors ×1.25 from step 3 (25 %)",
            "errors=1.25x,from-step=3",
            true,
            None,
        ),
        case(
            "latency ×1.2 from step 3 (25 %)",
            "latency=1.2x,from-step=3",
            true,
            None,
        ),
        Case {
            name: "latency tail σ 0.6→0.75 (p99 edge ×2.6)",
            items: "healthy",
            green_sigma: 0.75,
            regression: true,
            error_ratio: None,
        },
    ]
}

struct Options {
    healthy_seeds: u64,
    regression_seeds: u64,
    out: PathBuf,
    policy: PathBuf,
    /// Whether this run may replace `bench/README-table.md` (the default run only).
    readme: bool,
}

fn options() -> Options {
    let mut o = Options {
        healthy_seeds: 1000,
        regression_seeds: 400,
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results"),
        policy: Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/policy.toml"),
        readme: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                o.healthy_seeds = 100;
                o.regression_seeds = 40;
                o.readme = false;
            }
            "--seeds" => {
                let n: u64 = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seeds needs a number");
                o.healthy_seeds = 2 * n;
                o.regression_seeds = n;
                o.readme = false;
            }
            "--out" => {
                o.out = PathBuf::from(args.next().expect("--out needs a directory"));
                o.readme = false;
            }
            "--policy" => {
                o.policy = PathBuf::from(args.next().expect("--policy needs a file"));
                o.readme = false;
            }
            // `cargo bench` passes --bench; filters are ignored.
            _ => {}
        }
    }
    o
}

/// greenlight's policy for this world: the bench policy with φ set to what `greenlight
/// calibrate` would recommend from two hours of blue vs blue (a 50/50 split of one version).
/// The absolute p99 guard stays: windows with fewer than its `min_green_requests` do not count,
/// so a p99 of a handful of requests at 5 req/s cannot roll a healthy green back.
fn calibrated(policy: &Policy, scenario: &Scenario) -> (Policy, f64) {
    let aa = Scenario {
        error_multiplier: 1.0,
        latency_multiplier: 1.0,
        outages: Vec::new(),
        ..scenario.clone()
    };
    let mut world = World::new(policy, &aa, 0xCA1B);
    let start = default_start(policy);
    let mut intervals = Vec::new();
    for i in 0..120 {
        let t = start + SignedDuration::from_mins(i);
        let d = world.draw(
            t,
            t + SignedDuration::from_mins(1),
            Duration::from_secs(i as u64 * 60),
            0.5,
            0,
        );
        intervals.push((d.green.requests, d.blue.requests, d.green.bad, d.blue.bad));
    }
    let phi = estimate_dispersion(intervals)
        .map(|d| d.recommended_phi)
        .unwrap_or(1.0);
    let mut p = policy.clone();
    for c in &mut p.checks {
        if let CheckKind::ErrorRate { overdispersion, .. } = &mut c.kind {
            *overdispersion = phi;
        }
    }
    (p, phi)
}

/// Per (case, judge): every seed's run.
struct Cell {
    runs: Vec<JudgeRun>,
}

fn run_case(policy: &Policy, case: &Case, seeds: u64, threads: usize) -> (Vec<Cell>, f64) {
    let scenario: Scenario = case.items.parse().expect("valid scenario");
    let (gl_policy, phi) = calibrated(policy, &scenario);
    let stream = if case.regression {
        oracle_stream(policy, &scenario, case.green_sigma)
    } else {
        None
    };
    let horizon = Duration::from_secs(24 * 3600);
    let start = default_start(policy);
    let seed_list: Vec<u64> = (1..=seeds).collect();
    let chunks: Vec<&[u64]> = seed_list
        .chunks(seed_list.len().div_ceil(threads).max(1))
        .collect();
    let per_thread: Vec<Vec<[JudgeRun; 5]>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                let (scenario, stream, gl_policy) = (&scenario, &stream, &gl_policy);
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|&seed| {
                            let settings = RunSettings {
                                seed,
                                green_sigma: case.green_sigma,
                                horizon,
                                count_after_promotion: case.regression,
                                shadow: Vec::new(),
                            };
                            let shadowed = RunSettings {
                                shadow: stream
                                    .iter()
                                    .flat_map(|s| [s.clone(), s.at_tolerance(policy)])
                                    .collect(),
                                ..settings.clone()
                            };
                            let mut judges: [Box<dyn Judge>; 5] = [
                                Box::new(Greenlight::new(gl_policy, start)),
                                Box::new(Flagger::new(policy, start)),
                                Box::new(Kayenta::new(policy, start)),
                                Box::new(Oracle::new(policy, start, stream.clone())),
                                Box::new(Oracle::named(
                                    JUDGES[4],
                                    policy,
                                    start,
                                    stream.as_ref().map(|s| s.at_tolerance(policy)),
                                )),
                            ];
                            let runs: Vec<JudgeRun> = judges
                                .iter_mut()
                                .enumerate()
                                .map(|(i, j)| {
                                    let p = if i == 0 { gl_policy } else { policy };
                                    let st = if i == 0 { &shadowed } else { &settings };
                                    run_judge(p, scenario, j.as_mut(), st)
                                })
                                .collect();
                            runs.try_into().expect("five judges")
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let mut cells: Vec<Cell> = (0..JUDGES.len())
        .map(|_| Cell { runs: Vec::new() })
        .collect();
    for runs in per_thread.into_iter().flatten() {
        for (i, r) in runs.into_iter().enumerate() {
            cells[i].runs.push(r);
        }
    }
    (cells, phi)
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

/// Summary of one (case, judge).
struct Summary {
    n: usize,
    rollback_rate: f64,
    delay_median_min: Option<f64>,
    delay_p90_min: Option<f64>,
    bad_mean: f64,
    excess_mean: f64,
    promote_median_min: Option<f64>,
    promoted_rate: f64,
    shadow_median_min: Option<f64>,
    shadow_tolerance_median_min: Option<f64>,
}

fn summarise(cell: &Cell) -> Summary {
    let n = cell.runs.len();
    let minutes = |v: Vec<u64>| -> Vec<f64> {
        let mut m: Vec<f64> = v.into_iter().map(|s| s as f64 / 60.0).collect();
        m.sort_by(f64::total_cmp);
        m
    };
    let rolled: Vec<u64> = cell
        .runs
        .iter()
        .filter(|r| r.verdict == Verdict::RolledBack)
        .map(|r| r.decided_after_s)
        .collect();
    let promoted: Vec<u64> = cell
        .runs
        .iter()
        .filter(|r| r.verdict == Verdict::Promoted)
        .map(|r| r.decided_after_s)
        .collect();
    let shadow = |k: usize| {
        minutes(
            cell.runs
                .iter()
                .filter_map(|r| r.shadow_oracle_s.get(k).copied().flatten())
                .collect(),
        )
    };
    let delays = minutes(rolled.clone());
    let promotes = minutes(promoted.clone());
    Summary {
        n,
        rollback_rate: rolled.len() as f64 / n.max(1) as f64,
        delay_median_min: quantile(&delays, 0.5),
        delay_p90_min: quantile(&delays, 0.9),
        bad_mean: cell.runs.iter().map(|r| r.bad_green as f64).sum::<f64>() / n.max(1) as f64,
        excess_mean: cell.runs.iter().map(|r| r.excess_bad_green).sum::<f64>() / n.max(1) as f64,
        promote_median_min: quantile(&promotes, 0.5),
        promoted_rate: promoted.len() as f64 / n.max(1) as f64,
        shadow_median_min: quantile(&shadow(0), 0.5),
        shadow_tolerance_median_min: quantile(&shadow(1), 0.5),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("—".into(), |x| format!("{x:.0}"))
}

fn main() {
    let o = options();
    let text = std::fs::read_to_string(&o.policy)
        .unwrap_or_else(|e| panic!("read {}: {e}", o.policy.display()));
    let policy = Policy::from_toml(&text, &o.policy, None).unwrap_or_else(|errors| {
        for e in errors.iter() {
            eprintln!("{e}");
        }
        panic!("{} is not a valid policy", o.policy.display())
    });
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let began = Instant::now();
    let mut rows: Vec<(&Case, Vec<Summary>, f64)> = Vec::new();
    let suite = suite();
    for case in &suite {
        let seeds = if case.regression {
            o.regression_seeds
        } else {
            o.healthy_seeds
        };
        let t = Instant::now();
        let (cells, phi) = run_case(&policy, case, seeds, threads);
        eprintln!(
            "{:<45} {seeds:>4} seeds  {:>6.1}s",
            case.name,
            t.elapsed().as_secs_f64()
        );
        rows.push((case, cells.iter().map(summarise).collect(), phi));
    }
    std::fs::create_dir_all(&o.out).expect("create the output directory");
    let md = markdown(&policy, &rows, &o);
    std::fs::write(o.out.join("quality.md"), &md).expect("write quality.md");
    std::fs::write(o.out.join("quality.csv"), csv(&rows)).expect("write quality.csv");
    std::fs::write(o.out.join("quality.svg"), svg(&rows)).expect("write quality.svg");
    // The README embeds this file verbatim (a test checks it); only a full run of the bench
    // policy with the default seeds may replace it.
    if o.readme {
        let table = format!(
            "<!-- Generated by `cargo bench --bench quality` (bench/results/quality.md); regenerate, do not edit. -->\n\
             Regenerate with `cargo bench --bench quality` (about 3 to 4 minutes on 2 cores \
             after the release build, greenlight's runs going through the daemon shell and its \
             state codec; `-- --quick` for a smoke run, `-- --seeds N` for N per \
             regression and \
             2N per healthy scenario, `-- --policy FILE` for another policy). Outputs: \
             `bench/results/quality.md`, `quality.csv`, `quality.svg`; policy: `bench/policy.toml`.\n\n{md}"
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/README-table.md");
        std::fs::write(&path, table).expect("write bench/README-table.md");
        eprintln!(
            "Wrote bench/README-table.md: paste it into README.md's Decision quality section."
        );
    }
    println!("{md}");
    eprintln!(
        "Wrote {}/quality.{{md,csv,svg}} in {:.0}s.",
        o.out.display(),
        began.elapsed().as_secs_f64()
    );
}

fn markdown(policy: &Policy, rows: &[(&Case, Vec<Summary>, f64)], o: &Options) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Decision quality on simulated traffic (`cargo bench --bench quality`; {} seeds per \
         healthy scenario, {} per regression; 200 req/s unless noted, blue 0.5 % errors, latency \
         log-normal median 80 ms σ 0.6; steps {:?} % with ≥ {} each; α = {}; horizon 24 h).",
        o.healthy_seeds,
        o.regression_seeds,
        policy.steps,
        humantime::format_duration(policy.min_step_duration),
        policy.false_rollback_rate,
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| scenario | judge | false rollback | detected | TTD median / p90 (min) | bad green req (mean) | caused by the release (mean) | promoted | time to promote, median (min) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (case, sums, phi) in rows {
        for (j, sm) in JUDGES.iter().zip(sums) {
            let judge = if *j == "greenlight" && *phi > 1.0 {
                format!("greenlight (φ = {phi})")
            } else {
                j.to_string()
            };
            let rate = format!("{:.1} %", 100.0 * sm.rollback_rate);
            let (fr, det, ttd, bad, excess) = if case.regression {
                (
                    "—".to_string(),
                    rate,
                    format!("{} / {}", opt(sm.delay_median_min), opt(sm.delay_p90_min)),
                    format!("{:.0}", sm.bad_mean),
                    format!("{:.0}", sm.excess_mean),
                )
            } else {
                (rate, "—".into(), "—".into(), "—".into(), "—".into())
            };
            let _ = writeln!(
                s,
                "| {} | {judge} | {fr} | {det} | {ttd} | {bad} | {excess} | {:.1} % | {} |",
                case.name,
                100.0 * sm.promoted_rate,
                opt(sm.promote_median_min)
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Statistical efficiency on identical traffic: median minutes until greenlight rolled back \
         vs until Wald's SPRT (known ratio, α = {}) run on the very windows greenlight saw would \
         have crossed, testing r = 1 (docs/statistics.md §8) and testing the policy's own null \
         r = 1 + tolerance.",
        policy.false_rollback_rate
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| scenario | greenlight | SPRT vs r = 1 | ratio | SPRT vs r = 1 + tolerance | ratio |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    };
    for (case, sums, _) in rows.iter().filter(|(c, _, _)| c.regression) {
        let g = sums[0].delay_median_min;
        let (sh, st) = (
            sums[0].shadow_median_min,
            sums[0].shadow_tolerance_median_min,
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            case.name,
            opt(g),
            opt(sh),
            ratio(g, sh),
            opt(st),
            ratio(g, st)
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Bad green requests = green errors + green requests slower than 0.325 s, from the start \
         until the rollback; a promoted bad green keeps serving all traffic until the 24 h horizon. \
         The oracle knows which stream regressed and by how much and advances on the schedule; \
         it cannot falsely roll back. greenlight's φ is what `greenlight calibrate` recommends \
         from two hours of blue-vs-blue traffic of the same world."
    );
    s
}

fn csv(rows: &[(&Case, Vec<Summary>, f64)]) -> String {
    let mut s = String::from(
        "scenario,judge,regression,runs,rollback_rate,ttd_median_min,ttd_p90_min,bad_green_mean,excess_bad_green_mean,promoted_rate,promote_median_min,sprt_same_traffic_median_min,sprt_at_tolerance_same_traffic_median_min,phi\n",
    );
    let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.2}"));
    for (case, sums, phi) in rows {
        for (j, sm) in JUDGES.iter().zip(sums) {
            let _ = writeln!(
                s,
                "\"{}\",{j},{},{},{:.4},{},{},{:.1},{:.1},{:.4},{},{},{},{}",
                case.name,
                case.regression,
                sm.n,
                sm.rollback_rate,
                f(sm.delay_median_min),
                f(sm.delay_p90_min),
                sm.bad_mean,
                sm.excess_mean,
                sm.promoted_rate,
                f(sm.promote_median_min),
                f(sm.shadow_median_min),
                f(sm.shadow_tolerance_median_min),
                if *j == "greenlight" { *phi } else { 1.0 }
            );
        }
    }
    s
}

/// Two panels: median time to detect against the error ratio (log scale, oracles dashed; only
/// where the judge detected at least half of the runs), and
/// the trade-off of mean false-rollback rate over the healthy scenarios against mean bad green
/// requests over the regressions.
fn svg(rows: &[(&Case, Vec<Summary>, f64)]) -> String {
    let colours = ["#1b9e77", "#d95f02", "#7570b3", "#444444", "#999999"];
    let (w, h) = (900.0, 380.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    // Panel 1: delay vs ratio.
    let (x0, y0, pw, ph) = (60.0, 40.0, 360.0, 280.0);
    let ratios = [1.25f64, 1.5, 2.0, 5.0];
    let (lx0, lx1) = (1.2f64.ln(), 5.5f64.ln());
    let (ly0, ly1) = (1.0f64.ln(), 1440.0f64.ln());
    let px = |r: f64| x0 + (r.ln() - lx0) / (lx1 - lx0) * pw;
    let py = |m: f64| y0 + ph - (m.max(1.0).ln() - ly0) / (ly1 - ly0) * ph;
    let _ = writeln!(s, "<text x=\"{x0}\" y=\"24\" font-weight=\"bold\">Median time to detect an error regression (min, log)</text>");
    let _ = writeln!(s, "<rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>");
    for m in [1.0, 10.0, 100.0, 1000.0] {
        let y = py(m);
        let _ = writeln!(s, "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{m}</text>", x0 + pw, x0 - 4.0, y + 4.0);
    }
    for r in ratios {
        let x = px(r);
        let _ = writeln!(
            s,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">×{r}</text>",
            y0 + ph + 16.0
        );
    }
    for (j, colour) in colours.iter().enumerate() {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            // A median over a few detections out of hundreds of runs says nothing.
            .filter(|(_, sums, _)| sums[j].rollback_rate >= 0.5)
            .filter_map(|(c, sums, _)| Some((c.error_ratio?, sums[j].delay_median_min?)))
            .collect();
        let path: Vec<String> = pts
            .iter()
            .map(|(r, m)| format!("{:.1},{:.1}", px(*r), py(*m)))
            .collect();
        let dash = if j >= 3 {
            " stroke-dasharray=\"5,4\""
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>",
            path.join(" ")
        );
        for (r, m) in &pts {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                px(*r),
                py(*m)
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{}</text>",
            x0 + pw - 130.0,
            y0 + 16.0 + 15.0 * j as f64,
            JUDGES[j]
        );
    }
    // Panel 2: trade-off.
    let (x0, pw) = (500.0, 360.0);
    let pts: Vec<(f64, f64)> = (0..JUDGES.len())
        .map(|j| {
            let healthy: Vec<f64> = rows
                .iter()
                .filter(|(c, _, _)| !c.regression)
                .map(|(_, s, _)| s[j].rollback_rate)
                .collect();
            let bad: Vec<f64> = rows
                .iter()
                .filter(|(c, _, _)| c.regression)
                .map(|(_, s, _)| s[j].bad_mean)
                .collect();
            (
                healthy.iter().sum::<f64>() / healthy.len().max(1) as f64,
                bad.iter().sum::<f64>() / bad.len().max(1) as f64,
            )
        })
        .collect();
    let xmax = pts.iter().map(|p| p.0).fold(0.02, f64::max) * 1.1;
    let (by0, by1) = (
        pts.iter()
            .map(|p| p.1.max(1.0))
            .fold(f64::MAX, f64::min)
            .ln()
            - 0.5,
        pts.iter().map(|p| p.1.max(1.0)).fold(1.0, f64::max).ln() + 0.5,
    );
    let qx = |v: f64| x0 + v / xmax * pw;
    let qy = |v: f64| y0 + ph - (v.max(1.0).ln() - by0) / (by1 - by0) * ph;
    let _ = writeln!(
        s,
        "<text x=\"{x0}\" y=\"24\" font-weight=\"bold\">Trade-off: false rollbacks vs harm</text>"
    );
    let _ = writeln!(s, "<rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>");
    let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">mean false-rollback rate over healthy scenarios</text>", x0 + pw / 2.0, y0 + ph + 30.0);
    let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 {:.1} {:.1})\">mean bad green requests over regressions (log)</text>", x0 - 12.0, y0 + ph / 2.0, x0 - 12.0, y0 + ph / 2.0);
    for k in 0..=4 {
        let v = xmax * k as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.1} %</text>",
            qx(v),
            y0 + ph + 14.0,
            100.0 * v
        );
    }
    let ax = qx(0.01);
    let _ = writeln!(s, "<line x1=\"{ax:.1}\" y1=\"{y0}\" x2=\"{ax:.1}\" y2=\"{:.1}\" stroke=\"#c00\" stroke-dasharray=\"3,3\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#c00\">α</text>", y0 + ph, ax + 3.0, y0 + 12.0);
    for (j, (fx, by)) in pts.iter().enumerate() {
        // Labels of points in the right half go to the left of the point, so they stay inside.
        let (lx, anchor) = if qx(*fx) > x0 + pw / 2.0 {
            (qx(*fx) - 7.0, "end")
        } else {
            (qx(*fx) + 7.0, "start")
        };
        let _ = writeln!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"{}\"/><text x=\"{lx:.1}\" y=\"{:.1}\" fill=\"{}\" text-anchor=\"{anchor}\">{} ({:.0})</text>", qx(*fx), qy(*by), colours[j], qy(*by) + 4.0, colours[j], JUDGES[j], by);
    }
    s.push_str("</svg>\n");
    s
}
