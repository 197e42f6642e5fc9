//! `greenlight check` end to end: the shipped policies pass, each kind of mistake is reported at
//! its `file:line:col` with exit code 2, and a broken file does not hide the good ones.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A valid policy; the broken cases below are edits of it. Line numbers matter to the table.
const BASE: &str = r#"api = "shop"
alerts = ["oncall"]

[traffic]
consul_keys = { blue = "w/shop/blue", green = "w/shop/green" }

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(http_requests_total{job="shop",cluster="{color}"}[{interval}]))'
errors = 'sum(increase(http_requests_total{job="shop",cluster="{color}",code=~"5.."}[{interval}]))'
"#;

const LATENCY: &str = r#"
[[check]]
name = "latency"
kind = "latency_histogram"
buckets = 'sum by (le) (increase(http_request_duration_seconds_bucket{job="shop",cluster="{color}"}[{interval}]))'
edges = ["0.25", "fast"]
"#;

const CONFIG: &str = r#"[[alert]]
name = "oncall"
kind = "alertmanager"
url = "http://127.0.0.1:9093"
"#;

fn greenlight(config: Option<&Path>, paths: &[&Path]) -> Output {
    greenlight_with(config, paths, &[])
}

/// `greenlight check` with extra environment variables (the secrets a config names).
fn greenlight_with(config: Option<&Path>, paths: &[&Path], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenlight"));
    cmd.env_remove("GREENLIGHT_CONFIG");
    cmd.env_remove("CONSUL_HTTP_TOKEN");
    cmd.env_remove("SLACK_WEBHOOK_URL");
    cmd.envs(env.iter().copied());
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.arg("check").args(paths);
    cmd.output().expect("run greenlight check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `BASE` with the first `from` replaced by `to`.
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} is not in BASE");
    BASE.replacen(from, to, 1)
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("greenlight.toml");
    std::fs::write(&path, CONFIG).unwrap();
    path
}

#[test]
fn shipped_policies_pass_with_the_example_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The example config names these two secrets.
    let secrets = [
        ("CONSUL_HTTP_TOKEN", "token"),
        ("SLACK_WEBHOOK_URL", "https://hooks.example/x"),
    ];
    let out = greenlight_with(
        Some(&root.join("config/greenlight.toml")),
        &[&root.join("policies")],
        &secrets,
    );
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok: 2 policies (checkout, search)\n");
    assert_eq!(text(&out.stderr), "");

    // Without paths, the config's policies_dir (relative to the config file) is checked.
    let out = greenlight_with(Some(&root.join("config/greenlight.toml")), &[], &secrets);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok: 2 policies (checkout, search)\n");
}

#[test]
fn each_kind_of_mistake_is_located() {
    let window = "\n[schedule]\ntimezone = \"UTC\"\nwindows = [\"22:00-25:00\"]\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "toml syntax error",
            edit("api = \"shop\"", "api = \"shop"),
            "1:12: invalid basic string, expected `\"`",
        ),
        (
            "unknown key",
            edit("alerts =", "intervall = \"1m\"\nalerts ="),
            "2:1: unknown field `intervall`",
        ),
        (
            "steps not increasing",
            edit("alerts =", "steps = [1, 10, 5, 100]\nalerts ="),
            "2:17: steps must be strictly increasing: 5 follows 10",
        ),
        (
            "steps not ending at 100",
            edit("alerts =", "steps = [1, 50]\nalerts ="),
            "2:13: the last step must be 100, got 50",
        ),
        (
            "alpha out of range",
            edit("alerts =", "false_rollback_rate = 0.5\nalerts ="),
            "2:23: false_rollback_rate must be at least 0.000001 and below 0.5, got 0.5",
        ),
        (
            "missing {color}",
            edit(
                "requests = 'sum(increase(http_requests_total{job=\"shop\",cluster=\"{color}\"}",
                "requests = 'sum(increase(http_requests_total{job=\"shop\",cluster=\"blue\"}",
            ),
            "10:12: requests must contain {color}",
        ),
        (
            "missing {interval}",
            edit("code=~\"5..\"}[{interval}]", "code=~\"5..\"}[1m]"),
            "11:10: errors counts events per interval and must contain {interval}",
        ),
        (
            "bad edge",
            format!("{BASE}{LATENCY}"),
            "17:18: edge \"fast\" must be a finite positive number",
        ),
        (
            "bad window",
            format!("{BASE}{window}"),
            "15:12: time window \"22:00-25:00\" must be \"HH:MM-HH:MM\"",
        ),
        (
            "unknown time zone",
            format!(
                "{BASE}\n[schedule]\ntimezone = \"Europe/Atlantis\"\nwindows = [\"22:00-06:00\"]\n"
            ),
            "14:12: unknown time zone \"Europe/Atlantis\"",
        ),
        (
            "unknown alert channel",
            edit("[\"oncall\"]", "[\"oncall\", \"pager\"]"),
            "2:21: unknown alert channel \"pager\" (known: oncall)",
        ),
        (
            "both traffic targets",
            edit(
                "[traffic]\n",
                "[traffic]\nhaproxy = { backend = \"api_shop\", blue = \"b\", green = \"g\" }\n",
            ),
            "5:11: set either traffic.consul_keys or traffic.haproxy, not both",
        ),
        (
            "duplicate check names",
            format!(
                "{BASE}{}",
                LATENCY
                    .replace("\"latency\"\n", "\"errors\"\n")
                    .replace("\"fast\"", "\"1\"")
            ),
            "14:8: duplicate check name \"errors\" (first defined at 8:8)",
        ),
    ];

    for (what, policy, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path());
        let file = dir.path().join("shop.toml");
        std::fs::write(&file, &policy).unwrap();
        let out = greenlight(Some(&config), &[&file]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: stderr:\n{stderr}");
        let prefix = format!("{}:{expected}", file.display());
        assert!(
            stderr.lines().any(|l| l.starts_with(&prefix)),
            "{what}: expected a line starting with\n  {prefix}\ngot:\n{stderr}"
        );
        assert_eq!(text(&out.stdout), "ok: 0 policies\n", "{what}");
    }
}

#[test]
fn duplicate_api_is_reported_on_the_second_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let first = policies.join("a.toml");
    let second = policies.join("b.toml");
    std::fs::write(&first, BASE).unwrap();
    std::fs::write(&second, format!("# a copy\n{BASE}")).unwrap();
    let out = greenlight(Some(&config), &[&policies]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "{}:2:7: api \"shop\" is already defined in {}; API names must be unique\n",
            second.display(),
            first.display()
        )
    );
    assert_eq!(text(&out.stdout), "ok: 1 policy (shop)\n");
}

#[test]
fn broken_file_is_reported_and_the_good_one_still_counts() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let broken = policies.join("broken.toml");
    std::fs::write(
        &broken,
        edit("api = \"shop\"", "api = \"other\"").replacen(
            "alerts =",
            "steps = [1, 50]\nalerts =",
            1,
        ),
    )
    .unwrap();
    std::fs::write(policies.join("good.toml"), BASE).unwrap();
    let out = greenlight(Some(&config), &[&policies]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "{}:2:13: the last step must be 100, got 50\n",
            broken.display()
        )
    );
    assert_eq!(text(&out.stdout), "ok: 1 policy (shop)\n");
}

#[test]
fn config_errors_and_policy_errors_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("greenlight.toml");
    std::fs::write(&config, "[metrics]\nkind = \"graphite\"\n").unwrap();
    let file = dir.path().join("shop.toml");
    std::fs::write(&file, edit("alerts =", "steps = [1, 50]\nalerts =")).unwrap();
    let out = greenlight(Some(&config), &[&file]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "{}:2:8: unknown variant `graphite`",
            config.display()
        )),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!("{}:2:13: the last step", file.display())),
        "{stderr}"
    );
}

#[test]
fn empty_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = greenlight(None, &[dir.path()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!("{}: no policy files (*.toml) found\n", dir.path().display())
    );
}

#[test]
fn broken_config_is_reported_instead_of_validating_the_working_directory() {
    // `--config BROKEN check` used to validate ./policies (the built-in default) and pass.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("greenlight.toml");
    std::fs::write(&config, "policies_dir = 7\n").unwrap();
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("policies")).unwrap();
    std::fs::write(cwd.path().join("policies/shop.toml"), BASE).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .env_remove("GREENLIGHT_CONFIG")
        .current_dir(cwd.path())
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{}:1:16: invalid type: integer `7`",
            config.display()
        )),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "ok: 0 policies\n");
}

#[test]
fn fifo_named_toml_does_not_hang_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), BASE).unwrap();
    let fifo = dir.path().join("b.toml");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    let mut child = Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .env_remove("GREENLIGHT_CONFIG")
        .arg("check")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("greenlight check blocked on a FIFO named *.toml");
        }
        std::thread::yield_now();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}: not a regular file", fifo.display())),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "ok: 1 policy (shop)\n");
}

#[test]
fn missing_named_secret_and_weight_keys_in_the_state_prefix_fail_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("greenlight.toml");
    std::fs::write(
        &config,
        format!("[consul]\ntoken = {{ env = \"GREENLIGHT_CHECK_UNSET_TOKEN\" }}\nprefix = \"w\"\n\n{CONFIG}"),
    )
    .unwrap();
    let file = dir.path().join("shop.toml");
    std::fs::write(&file, BASE).unwrap();
    let out = greenlight(Some(&config), &[&file]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert_eq!(
        lines[0],
        format!(
            "{}:2:9: consul.token: environment variable GREENLIGHT_CHECK_UNSET_TOKEN is not set",
            config.display()
        )
    );
    assert!(
        lines[1].starts_with(&format!(
            "{}:5:24: Consul key for blue \"w/shop/blue\" is inside greenlight's own prefix \"w\"",
            file.display()
        )),
        "{stderr}"
    );
    assert!(lines[2].contains("Consul key for green"), "{stderr}");
}

#[test]
fn campaign_files_are_checked_against_the_policies_and_located() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::create_dir_all(dir.path().join("campaigns")).unwrap();
    std::fs::write(
        dir.path().join("policies/shop.toml"),
        edit("alerts =", "auto_start = false\nalerts ="),
    )
    .unwrap();
    let campaign = |name: &str, text: &str| {
        let path = dir.path().join(format!("campaigns/{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let good = campaign(
        "good",
        "name = \"move\"\nalerts = [\"oncall\"]\napis = [\"shop\"]\n",
    );
    let out = greenlight(Some(&config), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "ok: 1 policy (shop)\nok: 1 campaign (move)\n"
    );

    std::fs::remove_file(good).unwrap();
    let bad = campaign(
        "bad",
        "name = \"move\"\nmax_concurrent = 0\nalerts = [\"pager\"]\napis = [\"shop\"]\n",
    );
    let unknown = campaign(
        "unknown",
        "name = \"other\"\n\n\napis = [\"shop\", \"cart\"]\n",
    );
    let out = greenlight(Some(&config), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    for (line, want) in lines.iter().zip([
        format!("{}:2:18: max_concurrent must be between 1", bad.display()),
        format!("{}:3:11: unknown alert channel \"pager\"", bad.display()),
        format!(
            "{}:4:17: unknown API \"cart\": no policy has this api",
            unknown.display()
        ),
    ]) {
        assert!(
            line.starts_with(&want),
            "{line:?} does not start with {want:?}"
        );
    }
}

#[test]
fn checking_some_policies_validates_campaign_files_without_resolving_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::create_dir_all(dir.path().join("campaigns")).unwrap();
    let shop = dir.path().join("policies/shop.toml");
    std::fs::write(&shop, edit("alerts =", "auto_start = false\nalerts =")).unwrap();
    // No `cart` among the policies checked: with paths given, that is not an error.
    let campaign = dir.path().join("campaigns/move.toml");
    std::fs::write(&campaign, "name = \"move\"\napis = [\"shop\", \"cart\"]\n").unwrap();
    let out = greenlight(Some(&config), &[&shop]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A mistake in the file itself is still reported.
    std::fs::write(
        &campaign,
        "name = \"move\"\nmax_concurrent = 0\napis = [\"shop\"]\n",
    )
    .unwrap();
    let out = greenlight(Some(&config), &[&shop]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}:2:18: max_concurrent", campaign.display())),
        "{stderr}"
    );
}

#[test]
fn a_duplicate_campaign_name_is_reported_where_the_second_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::create_dir_all(dir.path().join("campaigns")).unwrap();
    std::fs::write(
        dir.path().join("policies/shop.toml"),
        edit("alerts =", "auto_start = false\nalerts ="),
    )
    .unwrap();
    let first = dir.path().join("campaigns/a.toml");
    let second = dir.path().join("campaigns/b.toml");
    std::fs::write(&first, "name = \"move\"\napis = [\"shop\"]\n").unwrap();
    std::fs::write(&second, "# again\nname = \"move\"\napis = [\"shop\"]\n").unwrap();
    let out = greenlight(Some(&config), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "{}:2:8: campaign \"move\" is already defined in {}; campaign names must be unique\n",
            second.display(),
            first.display()
        )
    );
}
