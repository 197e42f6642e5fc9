//! One API whose metrics backend hangs never delays another API's rollback: every API runs on
//! its own schedule, its queries run concurrently, and each evaluation is bounded.

mod support;

use std::time::Duration;

use support::fake_http::{Behaviour, FakeHttp};
use support::stack::{listen_addr, phase, policy_with, ErrorRates, Feeder, Stack};
use support::{eventually, http};

const DEADLINE: Duration = Duration::from_secs(60);
/// Each query of the `search` API waits for the whole metrics timeout (20 s). With one barrier per
/// tick, `checkout` would be evaluated once per 20 s and need about a minute to roll back; on its
/// own schedule it needs a few seconds.
const ROLLBACK_WITHIN: Duration = Duration::from_secs(20);
/// Well under one metrics timeout: the three checks' queries must all be in flight at once.
const ALL_QUERIES_WITHIN: Duration = Duration::from_secs(10);

/// Healthy blue, clearly worse green.
const BAD_GREEN: ErrorRates = ErrorRates {
    blue: 0.01,
    green: 0.4,
};

/// An API whose every query hangs at the backend (it mentions `search_requests_total`).
const SEARCH: &str = r#"
api = "search"
interval = "2s"
steps = [10, 50, 100]
min_step_duration = "2s"
min_green_requests_per_step = 20
warmup_intervals = 1

[traffic]
consul_keys = { blue = "w/search/blue", green = "w/search/green" }

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(search_requests_total{cluster="{color}"}[{interval}]))'
errors = 'sum(increase(search_requests_total{cluster="{color}",code="500"}[{interval}]))'
advance_max_rate = 0.05

[[check]]
name = "timeouts"
kind = "error_rate"
requests = 'sum(increase(search_requests_total{cluster="{color}"}[{interval}]))'
errors = 'sum(increase(search_requests_total{cluster="{color}",code="504"}[{interval}]))'
advance_max_rate = 0.05

[[check]]
name = "throttled"
kind = "error_rate"
requests = 'sum(increase(search_requests_total{cluster="{color}"}[{interval}]))'
errors = 'sum(increase(search_requests_total{cluster="{color}",code="429"}[{interval}]))'
advance_max_rate = 0.05
"#;

#[test]
fn a_hanging_backend_for_one_api_does_not_delay_another_apis_rollback() {
    let stack = Stack::start_with(&policy_with("auto_start = false"), true);
    stack.write_policy("search", SEARCH);
    stack.consul.put("w/search/blue", b"100");
    stack.consul.put("w/search/green", b"0");
    let _feeder = Feeder::start(&stack.haproxy, stack.vm(), BAD_GREEN, 5);
    let proxy = FakeHttp::start(Behaviour::Proxy {
        upstream: stack.vm().addr,
        hang_on: "search_requests_total".into(),
    });
    let listen = listen_addr();
    let cfg = stack.config("a", listen, &proxy.url());
    stack.edit_config(&cfg, "timeout = \"1s\"", "timeout = \"20s\"");
    let mut daemon = stack.daemon("a", &cfg, &[]);
    support::wait_ready(&mut daemon, listen, "/readyz", DEADLINE);

    // `search` is evaluating, stuck on its backend, with every check's queries in flight at once
    // (one after another, only the first check's would have arrived before its timeout).
    eventually("a hanging query of search", DEADLINE, || {
        search_queries(&proxy).next().map(|_| ())
    });
    eventually(
        "the queries of all three checks of search in flight",
        ALL_QUERIES_WITHIN,
        || {
            let seen: Vec<String> = search_queries(&proxy).collect();
            ["500", "504", "429"]
                .iter()
                .all(|code| seen.iter().any(|q| q.contains(&format!("code=\"{code}\""))))
                .then_some(())
        },
    );
    stack
        .greenlight(&cfg, &["start", "checkout"], &[])
        .expect_code(0);
    let state = stack.wait_state("checkout's rollback", ROLLBACK_WITHIN, |s| {
        phase(s) == "rolled_back" && s["applying_from"].is_null()
    });
    assert_eq!(stack.green_weight(), 0, "{state}");

    // `search` held where it was the whole time: no weight change, no rollback.
    assert_eq!(
        stack.consul.value("w/search/green").as_deref(),
        Some(&b"0"[..])
    );
    let search = stack.state_of("search");
    assert!(
        search.as_ref().is_none_or(|s| phase(s) != "rolled_back"),
        "{search:?}"
    );
    let (code, _) = http(listen, "GET", "/readyz", b"").unwrap();
    assert_eq!(code, 200, "the metrics backend itself answers its probe");
    daemon.assert_running();
}

/// The decoded bodies of the `search` queries the backend received so far.
fn search_queries(proxy: &FakeHttp) -> impl Iterator<Item = String> {
    proxy
        .received()
        .into_iter()
        .map(|r| r.body.replace("%22", "\"").replace("%3D", "="))
        .filter(|b| b.contains("search_requests_total"))
}
