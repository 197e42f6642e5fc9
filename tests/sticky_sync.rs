//! Sticky mode driven on two real HAProxy nodes: `greenlight sync` sets green's share and the
//! rollout's salt from Consul (weights and salt read in one transaction), restores them within
//! its repair interval after a reload, and replaces a subset map atomically when the policy's
//! members change; the direct HAProxy target moves the share step by step through the
//! `Actuator`, restores a reloaded node, rolls every user back to blue, and refuses to
//! overwrite a share changed by hand; `greenlight run` starts a sticky rollout with its salt.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenlight::consul::ConsulClient;
use greenlight::policy::{Policy, Weights};
use greenlight::traffic::sticky::{haproxy_config, initial_maps};
use greenlight::traffic::sticky_maps::{parse_show_map, rollout_salt};
use greenlight::traffic::sync::SyncMetrics;
use greenlight::traffic::{
    Actuator, ConsulKv, HaproxyRuntime, RuntimeAddr, SyncSettings, SyncTarget, Syncer, TrafficError,
};
use support::consul_double::ConsulDouble;
use support::eventually;
use support::haproxy::TinyServer;
use support::stack::{listen_addr, Stack, STATE_KEY};
use support::sticky::{colour, colours, node, served, Client, Node};

const BLUE: &str = "haproxy/checkout/weights/blue";
const GREEN: &str = "haproxy/checkout/weights/green";
const SALT: &str = "haproxy/checkout/weights/salt";
const DEADLINE: Duration = Duration::from_secs(20);
const REPAIR: Duration = Duration::from_millis(500);
const USERS: usize = 2_000;

fn policy_text(map_dir: &Path, consul: bool, members: &[&str]) -> String {
    let target = if consul {
        format!(
            "consul_keys = {{ blue = \"{BLUE}\", green = \"{GREEN}\" }}\n\
             haproxy_backend = {{ backend = \"api_checkout\", blue = \"blue\", green = \"green\" }}"
        )
    } else {
        "haproxy = { backend = \"api_checkout\", blue = \"blue\", green = \"green\" }".to_string()
    };
    format!(
        r#"api = "checkout"
interval = "2s"
steps = [1, 10, 50, 100]

[traffic]
{target}
mode = "sticky"

[traffic.sticky]
key = {{ header = "X-User-Id" }}
map_dir = "{dir}"

[[traffic.sticky.subset]]
name = "beta"
colour = "green"
members = {members:?}

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(http_requests_total{{cluster="{{color}}"}}[{{interval}}]))'
errors = 'sum(increase(http_requests_total{{cluster="{{color}}",code="500"}}[{{interval}}]))'
"#,
        dir = map_dir.display()
    )
}

fn policy(map_dir: &Path, consul: bool, members: &[&str]) -> Policy {
    Policy::from_toml(
        &policy_text(map_dir, consul, members),
        Path::new("checkout.toml"),
        None,
    )
    .expect("valid sticky policy")
}

/// Map files as `greenlight haproxy-config --maps` writes them, and two nodes running the
/// generated rules.
struct World {
    maps: tempfile::TempDir,
    _blue: TinyServer,
    _green: TinyServer,
    nodes: Vec<Node>,
}

fn world(consul: bool, members: &[&str]) -> World {
    let maps = tempfile::tempdir().unwrap();
    let p = policy(maps.path(), consul, members);
    for (path, text) in initial_maps(&p, "initial").unwrap() {
        std::fs::write(path, text).unwrap();
    }
    let rules = haproxy_config(&p).unwrap();
    let (blue, green) = (TinyServer::start("blue"), TinyServer::start("green"));
    let nodes = vec![
        node(&rules, blue.addr, green.addr),
        node(&rules, blue.addr, green.addr),
    ];
    World {
        maps,
        _blue: blue,
        _green: green,
        nodes,
    }
}

impl World {
    fn policy(&self, consul: bool, members: &[&str]) -> Policy {
        policy(self.maps.path(), consul, members)
    }

    fn map(&self, suffix: &str) -> String {
        format!("{}/checkout{suffix}.map", self.maps.path().display())
    }

    /// The entries of one map on node `i`.
    fn entries(&self, i: usize, map: &str) -> BTreeMap<String, String> {
        let reply = self.nodes[i].runtime(&format!("show map {map}"));
        parse_show_map(&reply).unwrap().into_iter().collect()
    }

    /// (share, salt) in node `i`'s API map.
    fn share(&self, i: usize) -> (String, String) {
        let e = self.entries(i, &self.map(""));
        (e["share"].clone(), e["salt"].clone())
    }

    fn addrs(&self) -> Vec<RuntimeAddr> {
        self.nodes
            .iter()
            .map(|n| n.url().parse().unwrap())
            .collect()
    }
}

fn green_users(c: &BTreeMap<String, &'static str>) -> BTreeSet<String> {
    c.iter()
        .filter(|(_, c)| **c == "green")
        .map(|(u, _)| u.clone())
        .collect()
}

fn assert_share_near(c: &BTreeMap<String, &'static str>, percent: f64) {
    let on_green = 100.0 * green_users(c).len() as f64 / c.len() as f64;
    assert!(
        (on_green - percent).abs() <= 2.0,
        "{on_green}% of users on green at a share of {percent}%"
    );
}

fn settings() -> SyncSettings {
    SyncSettings {
        repair_interval: REPAIR,
        watch_wait: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        node_timeout: Duration::from_secs(2),
        once_attempts: 2,
    }
}

fn syncer(d: &ConsulDouble, w: &World, policy: Policy) -> Syncer {
    let consul = ConsulClient::new(d.url(), None, Duration::from_secs(5)).unwrap();
    let targets = SyncTarget::from_policies(&[policy]).expect("sticky policy maps to HAProxy");
    Syncer::new(consul, w.addrs(), targets, settings())
}

fn sample(metrics: &SyncMetrics, name: &str, node: &str) -> f64 {
    let scrape = support::exposition::parse(&metrics.encode());
    support::exposition::value(&scrape, name, &[("node", node)]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sets_the_share_on_every_node_and_restores_it_after_a_reload() {
    let mut w = world(true, &["beta-1"]);
    let d = ConsulDouble::start();
    d.put(BLUE, b"90");
    d.put(GREEN, b"10");
    d.put(SALT, b"r1");
    let sync = syncer(&d, &w, w.policy(true, &["beta-1"]));
    let metrics: Arc<SyncMetrics> = sync.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sync.run(async move {
        let _ = stopped.await;
    }));

    tokio::task::block_in_place(|| {
        eventually("the share and salt on both nodes", DEADLINE, || {
            (0..2)
                .all(|i| w.share(i) == ("1000".into(), "r1".into()))
                .then_some(())
        });
        let before = colours(&w.nodes, USERS, true);
        assert_share_near(&before, 10.0);
        let green = green_users(&before);
        assert_eq!(
            served(&w.nodes[1], &[("X-User-Id", "beta-1")]),
            "green_pinned"
        );

        // Node B reloads: its map comes back from the file (share 0) until sync repairs it.
        // Green users are asked for on node B over and over, on fresh connections, until
        // every one is back on green; the last time any of them is seen on blue, counted from
        // the start of the reload, bounds how long a user can have been on the wrong colour.
        let probes: Vec<String> = green.iter().take(40).cloned().collect();
        let reload_started = Instant::now();
        w.nodes[1].reload();
        let mut last_wrong = None;
        let mut flipped = BTreeSet::new();
        loop {
            let mut c = Client::connect(w.nodes[1].app);
            let mut all_right = true;
            for user in &probes {
                if colour(&c.get(&[("X-User-Id", user.as_str())]).server) != "green" {
                    all_right = false;
                    last_wrong = Some(Instant::now());
                    flipped.insert(user.clone());
                }
            }
            if all_right && reload_started.elapsed() > REPAIR * 2 {
                break;
            }
            assert!(
                reload_started.elapsed() < DEADLINE,
                "green users still on blue on node B after {DEADLINE:?}"
            );
        }
        let window = last_wrong.map_or(Duration::ZERO, |t| t - reload_started);
        eprintln!(
            "after the reload: {} of {} green users seen on blue, the last {window:?} after the reload began",
            flipped.len(),
            probes.len()
        );
        assert!(
            window < REPAIR + Duration::from_millis(1500),
            "users were on the wrong colour {window:?} after the reload began (repair interval {REPAIR:?})"
        );
        assert_eq!(w.share(1), ("1000".into(), "r1".into()));
        assert_eq!(colours(&w.nodes, USERS, false), before);
    });
    let b = w.nodes[1].url();
    assert!(sample(&metrics, "greenlight_sync_drift_repairs_total", &b) >= 1.0);
    assert_eq!(
        sample(
            &metrics,
            "greenlight_sync_drift_repairs_total",
            &w.nodes[0].url()
        ),
        0.0
    );
    assert_eq!(
        sample(&metrics, "greenlight_sync_applied_share", &b),
        1000.0
    );

    // A step up in Consul adds users and keeps every green one; a new salt (a new rollout)
    // draws anew; without a salt at a partial share nothing is applied.
    let client = ConsulClient::new(d.url(), None, Duration::from_secs(5)).unwrap();
    let before = tokio::task::block_in_place(|| colours(&w.nodes, USERS, false));
    client
        .txn(&[
            greenlight::consul::TxnOp::set(BLUE, b"50"),
            greenlight::consul::TxnOp::set(GREEN, b"50"),
        ])
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        eventually("share 5000 on both nodes", DEADLINE, || {
            (0..2).all(|i| w.share(i).0 == "5000").then_some(())
        });
        let after = colours(&w.nodes, USERS, false);
        assert_share_near(&after, 50.0);
        assert!(green_users(&before).is_subset(&green_users(&after)));
        d.put(SALT, b"r2");
        eventually("the new salt on both nodes", DEADLINE, || {
            (0..2).all(|i| w.share(i).1 == "r2").then_some(())
        });
        let redrawn = colours(&w.nodes, USERS, false);
        assert_share_near(&redrawn, 50.0);
        assert_ne!(green_users(&redrawn), green_users(&after));
    });
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("sync stops")
        .unwrap();

    // The salt key gone while green has a partial share: sync refuses to draw with whatever
    // salt each node's file has.
    client
        .txn(&[greenlight::consul::TxnOp::delete(SALT)])
        .await
        .unwrap();
    let once = syncer(&d, &w, w.policy(true, &["beta-1"])).once().await;
    let errors = once.expect_err("no salt, nothing applied");
    assert!(errors[0].to_string().contains(SALT), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subset_change_is_committed_atomically_and_its_users_follow() {
    let w = world(true, &["beta-1", "beta-2"]);
    let d = ConsulDouble::start();
    d.put(BLUE, b"99");
    d.put(GREEN, b"1");
    d.put(SALT, b"r1");
    let beta = w.map(".beta");
    let version = |i: usize| -> String {
        let list = w.nodes[i].runtime("show map");
        let line = list
            .lines()
            .find(|l| l.contains(&format!("({beta})")))
            .unwrap_or_else(|| panic!("{beta} not in {list}"))
            .to_string();
        line.split_whitespace()
            .find(|f| f.starts_with("curr_ver="))
            .unwrap()
            .to_string()
    };
    assert_eq!(version(0), "curr_ver=0");

    // Same members: nothing replaced.
    syncer(&d, &w, w.policy(true, &["beta-1", "beta-2"]))
        .once()
        .await
        .unwrap();
    assert_eq!(version(0), "curr_ver=0");
    tokio::task::block_in_place(|| {
        assert_eq!(
            served(&w.nodes[0], &[("X-User-Id", "beta-2")]),
            "green_pinned"
        )
    });

    // The policy drops beta-2 and adds beta-3: each node gets a new version of the map,
    // filled and committed at once.
    syncer(&d, &w, w.policy(true, &["beta-1", "beta-3"]))
        .once()
        .await
        .unwrap();
    for i in 0..2 {
        assert_eq!(version(i), "curr_ver=1", "node {i}");
        let members: Vec<String> = w.entries(i, &beta).into_keys().collect();
        assert_eq!(members, ["beta-1", "beta-3"]);
    }
    tokio::task::block_in_place(|| {
        for n in &w.nodes {
            assert_eq!(served(n, &[("X-User-Id", "beta-3")]), "green_pinned");
            assert_eq!(served(n, &[("X-User-Id", "beta-1")]), "green_pinned");
            assert_ne!(served(n, &[("X-User-Id", "beta-2")]), "green_pinned");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_target_moves_the_share_step_by_step_and_never_overwrites_a_hand_edit() {
    let mut w = world(false, &["beta-1"]);
    let p = w.policy(false, &["beta-1"]);
    let actuator = Actuator::Haproxy(HaproxyRuntime::new(w.addrs()));
    let started = jiff::Timestamp::now();
    let salt = rollout_salt("checkout", Some(started));
    let at = |green: u32| Weights {
        blue: 100 - green,
        green,
    };

    assert_eq!(
        actuator.read_split(&p, None, Some(&salt)).await.unwrap(),
        at(0)
    );
    let mut previous = BTreeSet::new();
    let mut from = at(0);
    for green in [1, 10, 50] {
        actuator
            .write_split(&p, from, at(green), Some(&salt), None)
            .await
            .unwrap();
        from = at(green);
        assert_eq!(
            actuator.read_split(&p, None, Some(&salt)).await.unwrap(),
            from
        );
        let now = tokio::task::block_in_place(|| colours(&w.nodes, USERS, green == 1));
        assert_share_near(&now, f64::from(green));
        let on_green = green_users(&now);
        assert!(
            previous.is_subset(&on_green),
            "users left green at {green}%"
        );
        previous = on_green;
        assert_eq!(w.share(0), ((green * 100).to_string(), salt.clone()));
    }

    // A reloaded node is not a hand edit: its share comes back with the next write.
    tokio::task::block_in_place(|| w.nodes[1].reload());
    assert_eq!(w.share(1).0, "0");
    let e = actuator
        .read_split(&p, None, Some(&salt))
        .await
        .unwrap_err();
    assert!(matches!(e, TrafficError::Reloaded { .. }), "{e}");
    assert!(e.finishable(from, from), "{e}");
    actuator
        .write_split(&p, from, from, Some(&salt), None)
        .await
        .unwrap();
    assert_eq!(w.share(1), ("5000".into(), salt.clone()));
    let restored = tokio::task::block_in_place(|| colours(&w.nodes, USERS, false));
    assert_eq!(green_users(&restored), previous);

    // Rollback: share 0 on every node, every user on blue, the pinned one too.
    actuator
        .write_split(&p, from, at(0), Some(&salt), None)
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        assert!(colours(&w.nodes, USERS, false)
            .values()
            .all(|c| *c == "blue"));
        for n in &w.nodes {
            assert_eq!(served(n, &[("X-User-Id", "beta-1")]), "blue");
        }
    });

    // Someone sets a share by hand on node A: reads disagree, and the next step is refused
    // with what was found (the shell pauses on it), node B left as it was.
    w.nodes[0].runtime(&format!("set map {} share 2500", w.map("")));
    let e = actuator
        .read_split(&p, None, Some(&salt))
        .await
        .unwrap_err();
    assert!(matches!(e, TrafficError::Diverged(_)), "{e}");
    assert!(!e.finishable(at(0), at(0)), "{e}");
    let e = actuator
        .write_split(&p, at(0), at(1), Some(&salt), None)
        .await
        .unwrap_err();
    assert_eq!(e, TrafficError::Override { found: at(25) });
    assert_eq!(w.share(1).0, "0");
    assert_eq!(w.share(0).0, "2500");
}

#[tokio::test]
async fn the_salt_key_is_written_in_the_weights_transaction_and_set_again_when_lost() {
    let maps = tempfile::tempdir().unwrap();
    let p = policy(maps.path(), true, &["beta-1"]);
    let d = ConsulDouble::start();
    d.put(BLUE, b"100");
    d.put(GREEN, b"0");
    let consul = ConsulClient::new(d.url(), None, Duration::from_secs(5)).unwrap();
    let kv = Actuator::ConsulKv(ConsulKv::new(consul));
    let salt = rollout_salt("checkout", Some(jiff::Timestamp::now()));
    let at = |green: u32| Weights {
        blue: 100 - green,
        green,
    };
    // At share 0 the salt does not matter: no salt key yet is fine.
    assert_eq!(kv.read_split(&p, None, Some(&salt)).await.unwrap(), at(0));
    kv.write_split(&p, at(0), at(1), Some(&salt), None)
        .await
        .unwrap();
    assert_eq!(d.value(GREEN).as_deref(), Some(&b"1"[..]));
    assert_eq!(d.value(SALT).as_deref(), Some(salt.as_bytes()));
    assert_eq!(kv.read_split(&p, None, Some(&salt)).await.unwrap(), at(1));

    // Someone replaced the salt key: the split is greenlight's, so it is its own bookkeeping
    // to set again (the same write, weights unchanged), not a hand edit of the split.
    d.put(SALT, b"other");
    let e = kv.read_split(&p, None, Some(&salt)).await.unwrap_err();
    assert!(
        matches!(e, TrafficError::StaleSalt { found, .. } if found == at(1)),
        "{e}"
    );
    assert!(e.finishable(at(1), at(1)));
    kv.write_split(&p, at(1), at(1), Some(&salt), None)
        .await
        .unwrap();
    assert_eq!(d.value(SALT).as_deref(), Some(salt.as_bytes()));
    // A hand edit of the weights is still one, whatever the salt.
    d.put(GREEN, b"30");
    d.put(BLUE, b"70");
    assert_eq!(
        kv.write_split(&p, at(1), at(10), Some(&salt), None).await,
        Err(TrafficError::Override { found: at(30) })
    );
}

#[test]
fn greenlight_run_drives_a_sticky_policy_through_consul_with_the_rollouts_salt() {
    let text = format!(
        "auto_start = false\n{}",
        policy_text(Path::new("/etc/haproxy/greenlight"), true, &["beta-1"])
    );
    let stack = Stack::start_with(&text, false);
    let cfg = stack.config("a", listen_addr(), &Stack::unreachable_url());
    stack
        .greenlight(&cfg, &["start", "checkout"], &[])
        .expect_code(0);
    stack.run_once(&cfg);
    let state = greenlight::engine::decode_state(&stack.consul.value(STATE_KEY).unwrap()).unwrap();
    assert_eq!(state.phase, greenlight::engine::Phase::Progressing);
    assert_eq!(state.weights, Weights { blue: 99, green: 1 });
    // The first step's weights and this rollout's salt, written together.
    assert_eq!(stack.consul.value(GREEN).as_deref(), Some(&b"1"[..]));
    let salt = rollout_salt("checkout", state.rollout_started_at);
    assert_eq!(stack.consul.value(SALT).as_deref(), Some(salt.as_bytes()));
}
