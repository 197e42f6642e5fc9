//! Benchmark of `decide()` for one policy with three checks (errors, two latency edges, a
//! threshold guard), at mid-rollout with a full decision history.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use greenlight::engine::{decide, RolloutState};
use greenlight::policy::Policy;
use greenlight::sim::{default_start, Scenario, World};
use jiff::SignedDuration;

fn bench_decide(c: &mut Criterion) {
    let path = Path::new("policies/checkout.toml");
    let policy = Policy::from_toml(include_str!("../policies/checkout.toml"), path, None)
        .expect("example policy is valid");
    let scenario = Scenario::default();
    let mut world = World::new(&policy, &scenario, 42);
    let start = default_start(&policy);
    let step = SignedDuration::try_from(policy.interval).unwrap();
    let mut state = RolloutState::started(&policy, start);
    let mut t = start;
    // Fill the history and the evidence: 90 windows of a healthy world.
    for _ in 0..90 {
        let share = state.weights.green as f64 / policy.traffic.total_weight as f64;
        let obs = world.observe(t, t + step, share, state.step);
        state = decide(&policy, &state, &obs, t + step).state;
        t += step;
        if state.phase != greenlight::engine::Phase::Progressing {
            state = RolloutState::started(&policy, t);
        }
    }
    let share = state.weights.green as f64 / policy.traffic.total_weight as f64;
    let obs = world.observe(t, t + step, share, state.step);
    let now = t + step;
    c.bench_function("decide/three_checks", |b| {
        b.iter(|| decide(black_box(&policy), black_box(&state), black_box(&obs), now))
    });
}

criterion_group!(benches, bench_decide);
criterion_main!(benches);
