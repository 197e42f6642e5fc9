//! The console in a real browser (headless Chromium through WebDriver) against a real daemon:
//! signing in through the proxy's headers or with an API token at the sign-in page, pausing
//! from the page, signing out, read-only pages for other teams, refused cross-site posts. Screenshots go to `target/screenshots/`.

use std::net::SocketAddr;
use std::time::Duration;

mod support;
use support::console::{console_section, request, wait_ready, ACCESS, OWNER_TOKEN};
use support::fake_http::{Behaviour, FakeHttp};
use support::stack::{listen_addr, phase, ErrorRates, Feeder, Stack, POLICY};
use support::webdriver::Browser;
use support::Proc;

const OWNER: [(&str, &str); 2] = [
    ("X-Forwarded-User", "ana"),
    ("X-Forwarded-Groups", "payments,developers"),
];
const OTHER_TEAM: [(&str, &str); 2] = [
    ("X-Forwarded-User", "sam"),
    ("X-Forwarded-Groups", "search"),
];

/// `checkout` owned by `payments`, staying at its first step (a dwell of an hour).
fn policy() -> String {
    format!(
        "{ACCESS}\n{}",
        POLICY.replace("min_step_duration = \"2s\"", "min_step_duration = \"1h\"")
    )
}

struct Running {
    stack: Stack,
    addr: SocketAddr,
    _daemon: Proc,
    _feeder: Option<Feeder>,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn running(with_traffic: bool) -> Running {
    let stack = Stack::start_with(&policy(), with_traffic);
    let feeder = with_traffic.then(|| {
        Feeder::start(
            &stack.haproxy,
            stack.vm(),
            ErrorRates {
                blue: 0.01,
                green: 0.01,
            },
            7,
        )
    });
    let addr = listen_addr();
    let metrics = match &stack.vm {
        Some(vm) => vm.url(),
        None => Stack::unreachable_url(),
    };
    let cfg = stack.config_with("a", addr, &metrics, &console_section());
    let daemon = stack.daemon("a", &cfg, &[]);
    wait_ready(addr, OWNER_TOKEN, "checkout");
    Running {
        stack,
        addr,
        _daemon: daemon,
        _feeder: feeder,
    }
}

#[test]
fn the_owner_signs_in_through_the_proxy_pauses_and_sees_the_audit_entry() {
    let r = running(true);
    // A few decisions, so that the charts have something to show.
    r.stack
        .wait_state("four decisions", Duration::from_secs(60), |s| {
            support::stack::revision(s) >= 4 && phase(s) == "progressing"
        });
    let b = Browser::start();
    b.set_headers(&OWNER);
    b.goto(&r.url("/"));
    let overview = b.wait_source("the overview", Duration::from_secs(10), |s| {
        s.contains("data-api=\"checkout\"")
    });
    assert!(overview.contains("ana"), "the signed-in user is shown");
    assert!(overview.contains("payments"), "the owner team is shown");
    assert!(overview.contains("phase-progressing"));
    b.resize(1280, 520);
    let shot = b.screenshot("overview");
    eprintln!("overview screenshot: {}", shot.display());

    b.click("a[href='/apis/checkout']");
    b.wait_source("the API page", Duration::from_secs(10), |s| {
        s.contains("id=\"action-form\"") && s.contains("<svg")
    });
    let page = b.source();
    assert!(
        page.contains("Steps") && page.contains("entered "),
        "step ladder"
    );
    assert!(page.contains("errors: evidence (ln E)"), "evidence chart");
    assert!(
        page.contains("rollback at 1/α"),
        "the rollback threshold is drawn"
    );
    assert!(
        page.contains("vmui/#/?g0.expr="),
        "queries link to the metrics UI"
    );
    assert!(page.contains("Policy as loaded"));
    b.resize(1280, 1900);
    let shot = b.screenshot("api-page");
    eprintln!("API page screenshot: {}", shot.display());

    // Pause from the page. A decision between the page's refresh and the click makes the view
    // stale (409, the page refreshes); then the owner clicks again.
    let mut recorded = false;
    for _ in 0..5 {
        b.type_into("#reason", "checking a customer report");
        b.click("button[value='pause']");
        let result = support::eventually("the action's answer", Duration::from_secs(10), || {
            let t = b.text("#action-result");
            (t.contains("recorded") || t.contains("Not done")).then_some(t)
        });
        if result.contains("recorded") {
            recorded = true;
            break;
        }
    }
    assert!(recorded, "the pause was never recorded");
    let paused = r
        .stack
        .wait_state("paused in Consul", Duration::from_secs(30), |s| {
            phase(s) == "paused"
        });
    assert_eq!(paused["reason"], "checking a customer report");
    // The audit entry appears on the page (live update, no reload).
    let page = b.wait_source(
        "the audit entry on the page",
        Duration::from_secs(15),
        |s| s.contains("class=\"audit\"") && s.contains("phase-paused"),
    );
    let row = page
        .split("<tr class=\"audit\">")
        .nth(1)
        .expect("an audit row");
    assert!(
        row.contains("ana") && row.contains("payments"),
        "who: {row}"
    );
    assert!(
        row.contains("pause") && row.contains("checking a customer report"),
        "what: {row}"
    );
}

#[test]
fn another_team_gets_a_read_only_page_and_the_write_api_refuses() {
    let r = running(false);
    let b = Browser::start();
    // No credentials at all: the console asks for sign-in.
    b.goto(&r.url("/apis/checkout"));
    b.wait_source("the sign-in page", Duration::from_secs(10), |s| {
        s.contains("Sign-in required") && s.contains("id=\"token\"")
    });

    b.set_headers(&OTHER_TEAM);
    b.goto(&r.url("/apis/checkout"));
    let page = b.wait_source("the read-only page", Duration::from_secs(10), |s| {
        s.contains("read-only")
    });
    assert!(
        page.contains("sam may view this API but not act on it"),
        "{page}"
    );
    assert!(!b.exists("#action-form"), "no action buttons for a viewer");
    // The same request the owner's page would send, from this page: 403.
    let answer = b.run_async(
        r#"const done = arguments[0];
        const token = document.querySelector('meta[name="csrf-token"]').content;
        fetch("/api/v1/rollouts/checkout/actions", {method: "POST",
            headers: {"Content-Type": "application/json", "X-CSRF-Token": token},
            body: JSON.stringify({action: "pause", reason: "not mine"})})
          .then(r => r.json().then(j => done({status: r.status, error: j.error})));"#,
    );
    assert_eq!(answer["status"], 403, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("may view checkout but not pause it"));
    assert!(r.stack.state().is_none_or(|s| s["intent"].is_null()));
}

#[test]
fn a_cross_site_form_post_is_refused() {
    let r = running(false);
    // Another site whose page posts a form to the console as soon as it loads.
    let evil = FakeHttp::start(Behaviour::Answer {
        status: 200,
        content_type: "text/html",
        body: format!(
            r#"<!doctype html><html><body><form id="f" method="post" enctype="text/plain"
               action="http://{}/api/v1/rollouts/checkout/actions">
               <input name='{{"action":"rollback","reason":"x","y":"' value='"}}'></form>
               <script>document.getElementById("f").submit();</script></body></html>"#,
            r.addr
        ),
    });
    let b = Browser::start();
    b.set_headers(&OWNER);
    // The owner has the console open (session cookie set) and visits the other site.
    b.goto(&r.url("/apis/checkout"));
    b.find("#action-form");
    b.goto(&evil.url());
    let refused = b.wait_source("the refusal", Duration::from_secs(10), |s| {
        s.contains("cross-site request refused")
    });
    assert!(!refused.contains("\"after\""), "{refused}");
    assert!(
        r.stack.state().is_none_or(|s| s["intent"].is_null()),
        "the cross-site post changed the state"
    );
    // The same action sent with the owner's token (no browser session) is fine.
    let ok = request(
        r.addr,
        "POST",
        "/api/v1/rollouts/checkout/actions",
        &[
            ("Authorization", &format!("Bearer {OWNER_TOKEN}")),
            ("Content-Type", "application/json"),
        ],
        Some(r#"{"action":"pause","reason":"scripted"}"#),
        None,
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[test]
fn approving_a_gate_from_the_page_advances_the_rollout_and_records_the_approver() {
    let stack = Stack::start_with(&format!("{ACCESS}\napproval_before = [50]\n{POLICY}"), true);
    let _feeder = Feeder::start(
        &stack.haproxy,
        stack.vm(),
        ErrorRates {
            blue: 0.0,
            green: 0.0,
        },
        11,
    );
    let addr = listen_addr();
    let cfg = stack.config_with("a", addr, &stack.vm().url(), &console_section());
    let _daemon = stack.daemon("a", &cfg, &[]);
    wait_ready(addr, OWNER_TOKEN, "checkout");
    stack.wait_state("the wait at the gate", Duration::from_secs(90), |s| {
        !s["awaiting_approval"].is_null() && s["applying_from"].is_null()
    });

    let b = Browser::start();
    b.set_headers(&[
        ("X-Forwarded-User", "rita"),
        ("X-Forwarded-Groups", "release-managers"),
    ]);
    b.goto(&format!("http://{addr}/apis/checkout"));
    let page = b.wait_source("the gate on the page", Duration::from_secs(10), |s| {
        s.contains("waiting for approval to enter step 2 (50 %)")
    });
    // An approver may approve, nothing else.
    assert!(page.contains("value=\"approve\""));
    for other in ["pause", "rollback", "promote", "start"] {
        assert!(
            !page.contains(&format!("value=\"{other}\"")),
            "{other} offered"
        );
    }
    let mut recorded = false;
    for _ in 0..5 {
        b.type_into("#reason", "change CHG-1234 approved");
        b.click("button[value='approve']");
        let result = support::eventually("the answer", Duration::from_secs(10), || {
            let t = b.text("#action-result");
            (t.contains("recorded") || t.contains("Not done")).then_some(t)
        });
        if result.contains("recorded") {
            recorded = true;
            break;
        }
    }
    assert!(recorded, "the approval was never recorded");
    let advanced = stack.wait_state("step 2", Duration::from_secs(30), |s| {
        support::stack::step(s) == 1
    });
    let entered = advanced["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["action"] == "advance")
        .expect("an advance")
        .clone();
    assert_eq!(entered["approved_by"], "rita");
    let page = b.wait_source("the approver on the page", Duration::from_secs(15), |s| {
        s.contains("approved by rita") && s.contains("class=\"audit\"")
    });
    assert!(page.contains("change CHG-1234 approved"));
}

/// The session cookie the browser holds, if any.
fn session_cookie(b: &Browser) -> Option<serde_json::Value> {
    b.cookies()
        .into_iter()
        .find(|c| c["name"] == "greenlight_session")
}

/// Sends `action` with `reason` from the API page's form until it is recorded (a decision
/// between the page's refresh and the click makes the view stale: 409, the page refreshes).
fn act_from_page(b: &Browser, action: &str, reason: &str) {
    for _ in 0..5 {
        b.type_into("#reason", reason);
        b.click(&format!("button[value='{action}']"));
        let result = support::eventually("the action's answer", Duration::from_secs(10), || {
            let t = b.text("#action-result");
            (t.contains("recorded") || t.contains("Not done")).then_some(t)
        });
        if result.contains("recorded") {
            return;
        }
    }
    panic!("the {action} was never recorded");
}

#[test]
fn a_token_signs_in_at_the_sign_in_page_pauses_and_signs_out() {
    let r = running(true);
    r.stack
        .wait_state("progressing", Duration::from_secs(60), |s| {
            phase(s) == "progressing"
        });
    let b = Browser::start();
    // Without credentials the browser lands on the sign-in form.
    b.goto(&r.url("/apis/checkout"));
    b.wait_source("the sign-in form", Duration::from_secs(10), |s| {
        s.contains("id=\"token\"")
    });
    assert!(
        b.url().contains("/signin?next=%2Fapis%2Fcheckout"),
        "{}",
        b.url()
    );

    // A wrong token: an error on the form, no session.
    b.type_into("#token", "gl-typo-0000-not-a-real-secret");
    b.click("#signin");
    let refused = b.wait_source("the error", Duration::from_secs(10), |s| {
        s.contains("id=\"signin-error\"")
    });
    assert!(refused.contains("That token is not valid."), "{refused}");
    assert!(!refused.contains("gl-typo-0000"), "the token is not echoed");
    assert_eq!(session_cookie(&b), None, "a wrong token got a session");
    b.resize(1280, 520);
    let shot = b.screenshot("signin");
    eprintln!("sign-in screenshot: {}", shot.display());

    // The owner's token: back on the API page, signed in, with the action buttons.
    b.type_into("#token", OWNER_TOKEN);
    b.click("#signin");
    let page = b.wait_source("the API page, signed in", Duration::from_secs(10), |s| {
        s.contains("id=\"action-form\"")
    });
    assert!(page.contains("deploy-bot"), "the token's user is shown");
    assert!(page.contains("via session"));
    assert!(!page.contains(OWNER_TOKEN), "the token is not on the page");
    let cookie = session_cookie(&b).expect("a session cookie");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert_ne!(cookie["value"], OWNER_TOKEN);

    act_from_page(&b, "pause", "paused after a token sign-in");
    let paused = r
        .stack
        .wait_state("paused in Consul", Duration::from_secs(30), |s| {
            phase(s) == "paused"
        });
    assert_eq!(paused["reason"], "paused after a token sign-in");
    let page = b.wait_source("the audit entry", Duration::from_secs(15), |s| {
        s.contains("class=\"audit\"") && s.contains("paused after a token sign-in")
    });
    let row = page
        .split("<tr class=\"audit\">")
        .nth(1)
        .expect("an audit row");
    assert!(row.contains("deploy-bot"), "who: {row}");

    // Signing out ends the session: the sign-in form again, and the API refuses the browser.
    b.click("#signout");
    b.wait_source("the sign-in form again", Duration::from_secs(10), |s| {
        s.contains("id=\"token\"")
    });
    assert_eq!(session_cookie(&b), None, "the session cookie is cleared");
    b.goto(&r.url("/apis/checkout"));
    b.wait_source("sign-in asked again", Duration::from_secs(10), |s| {
        s.contains("id=\"token\"")
    });
    let me = b.run_async(
        r#"const done = arguments[0];
        fetch("/api/v1/me", {credentials: "same-origin"}).then(r => done({status: r.status}));"#,
    );
    assert_eq!(me["status"], 401, "{me}");
}
