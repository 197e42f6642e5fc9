//! Simulated nights of the whole daemon shell with faults injected at every I/O step.
//!
//! `cargo bench --bench soak -- --seeds N --hours H [--faults LIST] [--seed S] [--trace]`
//!
//! Runs seeds `S..S+N` (default 0..1000, 8 h each, every fault kind), prints a Markdown table of
//! nights, simulated hours, faults injected by kind, invariant violations and the outcome per
//! world, and exits 1 on any violation. `--seed S --trace` replays one seed with its full event
//! trace. `--faults` takes `all`, `none` or a comma-separated list (`name` or `name=rate`).

use std::process::ExitCode;
use std::time::Instant;

use greenlight::sim::night::{run_night, Faults, NightConfig, SoakReport};

fn main() -> ExitCode {
    let mut seeds = 1000u64;
    let mut hours = 8.0;
    let mut faults = Faults::all();
    let mut first = 0u64;
    let mut trace = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match a.as_str() {
            "--seeds" => seeds = value("--seeds").parse().expect("--seeds takes a number"),
            "--hours" => hours = value("--hours").parse().expect("--hours takes a number"),
            "--seed" => {
                first = value("--seed").parse().expect("--seed takes a number");
                seeds = 1;
            }
            "--faults" => {
                faults =
                    Faults::parse(&value("--faults")).unwrap_or_else(|e| panic!("--faults: {e}"))
            }
            "--trace" => trace = true,
            // Arguments cargo passes to every bench binary.
            "--bench" => {}
            other => panic!("unknown argument {other:?}"),
        }
    }
    let started = Instant::now();
    let mut report = SoakReport::default();
    for seed in first..first + seeds {
        let r = run_night(&NightConfig {
            seed,
            hours,
            faults: faults.clone(),
            trace,
        });
        if trace {
            for line in &r.trace {
                println!("{line}");
            }
        }
        report.add(&r);
    }
    let wall = started.elapsed().as_secs_f64();
    println!("{}", report.table());
    println!(
        "\nwall time {wall:.1} s, {:.0} simulated hours per second",
        report.hours / wall.max(1e-9)
    );
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
