//! The console's JSON API and sign-in against a real daemon (Consul double, HAProxy): who gets
//! in (proxy headers, bearer tokens, token sign-in sessions), who may do what, and what bad
//! input gets.

use std::net::SocketAddr;

mod support;
use support::console::{
    act, console_section, cookie_value, form_encode, get, page_csrf, request, set_cookie, sign_in,
    wait_ready, ACCESS, OUTSIDER_TOKEN, OWNER_TOKEN, VIEWER_TOKEN,
};
use support::stack::{listen_addr, policy_with, Stack};
use support::Proc;

struct Console {
    stack: Stack,
    addr: SocketAddr,
    daemon: Proc,
}

/// A daemon with sign-in configured (`extra` is appended to the config) and `checkout` owned
/// by `payments`, waiting for `greenlight start`.
fn console(extra: &str) -> Console {
    let stack = Stack::start_with(
        &policy_with(&format!("{ACCESS}\nauto_start = false")),
        false,
    );
    let addr = listen_addr();
    let cfg = stack.config_with("a", addr, &Stack::unreachable_url(), extra);
    let daemon = stack.daemon("a", &cfg, &[]);
    Console {
        stack,
        addr,
        daemon,
    }
}

fn signed_in() -> Console {
    let c = console(&console_section());
    wait_ready(c.addr, OWNER_TOKEN, "checkout");
    c
}

#[test]
fn without_sign_in_everything_is_read_only_and_writes_say_why() {
    let c = console("");
    let addr = c.addr;
    support::eventually("the console", std::time::Duration::from_secs(30), || {
        (get(addr, "/api/v1/rollouts/checkout", &[]).status == 200).then_some(())
    });
    let page = get(addr, "/apis/checkout", &[]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("read-only"), "{}", page.body);
    assert!(!page.body.contains("id=\"action-form\""));
    let refused = request(
        addr,
        "POST",
        "/api/v1/rollouts/checkout/actions",
        &[("Content-Type", "application/json")],
        Some(r#"{"action":"pause","reason":"try"}"#),
        None,
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("no sign-in is configured"));
    assert!(c.stack.state().is_none_or(|s| s["intent"].is_null()));
}

#[test]
fn with_sign_in_configured_a_request_without_credentials_gets_401() {
    let c = signed_in();
    for path in [
        "/",
        "/apis/checkout",
        "/api/v1/rollouts",
        "/api/v1/rollouts/checkout",
    ] {
        let a = get(c.addr, path, &[]);
        assert_eq!(a.status, 401, "{path}: {}", a.body);
    }
    // The API's documentation and the health endpoints stay open.
    assert_eq!(get(c.addr, "/api/v1/openapi.json", &[]).status, 200);
    assert_eq!(get(c.addr, "/healthz", &[]).status, 200);
}

#[test]
fn proxy_headers_count_only_from_the_proxy_address() {
    let c = signed_in();
    let headers = [
        ("X-Forwarded-User", "ana"),
        ("X-Forwarded-Groups", "payments"),
    ];
    let proxy = request(c.addr, "GET", "/api/v1/me", &headers, None, None);
    assert_eq!(proxy.status, 200, "{}", proxy.body);
    assert_eq!(proxy.json()["user"], "ana");
    assert_eq!(proxy.json()["roles"]["checkout"], "owner");
    // The same headers from another address are ignored: anonymous, hence 401.
    let elsewhere = request(
        c.addr,
        "GET",
        "/api/v1/me",
        &headers,
        None,
        Some("127.0.0.2".parse().unwrap()),
    );
    assert_eq!(elsewhere.status, 401, "{}", elsewhere.body);
}

#[test]
fn owners_act_viewers_read_and_others_see_nothing() {
    let c = signed_in();
    let view = get(
        c.addr,
        "/api/v1/rollouts/checkout",
        &[("Authorization", &format!("Bearer {VIEWER_TOKEN}"))],
    );
    assert_eq!(view.status, 200);
    let index = view.json()["state_index"].as_u64().unwrap_or(0);
    let refused = act(
        c.addr,
        VIEWER_TOKEN,
        "checkout",
        &format!(r#"{{"action":"pause","reason":"curious","expected_revision":{index}}}"#),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("may view checkout but not pause it"),
        "{}",
        refused.body
    );

    // Another team does not see the API at all.
    let outsider = format!("Bearer {OUTSIDER_TOKEN}");
    assert_eq!(
        get(
            c.addr,
            "/api/v1/rollouts/checkout",
            &[("Authorization", &outsider)]
        )
        .status,
        404
    );
    let list = get(c.addr, "/api/v1/rollouts", &[("Authorization", &outsider)]);
    assert_eq!(list.json(), serde_json::json!([]));
    assert_eq!(
        act(
            c.addr,
            OUTSIDER_TOKEN,
            "checkout",
            r#"{"action":"pause","reason":"x"}"#
        )
        .status,
        404
    );

    // The owner's pause is recorded in Consul and in the audit trail, with who and why.
    let done = act(
        c.addr,
        OWNER_TOKEN,
        "checkout",
        &format!(r#"{{"action":"start","reason":"release 4.2","expected_revision":{index}}}"#),
    );
    assert_eq!(done.status, 200, "{}", done.body);
    let state = c.stack.state().expect("state written");
    assert_eq!(state["intent"]["intent"], "start");
    let audit = get(
        c.addr,
        "/api/v1/rollouts/checkout/audit",
        &[("Authorization", &format!("Bearer {OWNER_TOKEN}"))],
    );
    let entries = audit.json();
    let last = entries
        .as_array()
        .unwrap()
        .last()
        .expect("an audit entry")
        .clone();
    assert_eq!(last["user"], "deploy-bot");
    assert_eq!(last["groups"], serde_json::json!(["payments"]));
    assert_eq!(last["action"], "start");
    assert_eq!(last["reason"], "release 4.2");
    assert_eq!(last["source"], "127.0.0.1");
    assert_eq!(last["request_id"], done.json()["request_id"]);
}

#[test]
fn bad_input_unknown_api_404_unknown_action_400_stale_409_oversized_413() {
    let c = signed_in();
    let missing = act(
        c.addr,
        OWNER_TOKEN,
        "nosuch",
        r#"{"action":"pause","reason":"x"}"#,
    );
    assert_eq!(missing.status, 404);
    let unknown = act(
        c.addr,
        OWNER_TOKEN,
        "checkout",
        r#"{"action":"explode","reason":"x"}"#,
    );
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.body.contains("unknown action \\\"explode\\\""),
        "{}",
        unknown.body
    );
    let no_reason = act(c.addr, OWNER_TOKEN, "checkout", r#"{"action":"pause"}"#);
    assert_eq!(no_reason.status, 400);
    let garbage = act(c.addr, OWNER_TOKEN, "checkout", "{not json");
    assert_eq!(garbage.status, 400);

    // A view that is no longer current: nothing done, the current state returned.
    let first = act(
        c.addr,
        OWNER_TOKEN,
        "checkout",
        r#"{"action":"start","reason":"go"}"#,
    );
    assert_eq!(first.status, 200, "{}", first.body);
    let now = first.json()["revision"].as_u64().unwrap();
    let stale = act(
        c.addr,
        OWNER_TOKEN,
        "checkout",
        &format!(
            r#"{{"action":"rollback","reason":"old view","expected_revision":{}}}"#,
            now - 1
        ),
    );
    assert_eq!(stale.status, 409, "{}", stale.body);
    let body = stale.json();
    assert_eq!(body["revision"].as_u64(), Some(now));
    assert_eq!(body["current"]["intent_pending"]["intent"], "start");
    assert_eq!(c.stack.state().unwrap()["intent"]["intent"], "start");

    let huge = format!(
        r#"{{"action":"pause","reason":"{}"}}"#,
        "x".repeat(64 * 1024)
    );
    assert_eq!(act(c.addr, OWNER_TOKEN, "checkout", &huge).status, 413);
}

#[test]
fn a_wrong_token_gets_401_and_no_token_shows_in_answers_logs_or_metrics() {
    let mut c = signed_in();
    let wrong = "gl-wrong-token-5d1e-not-a-real-secret";
    let a = get(
        c.addr,
        "/api/v1/rollouts",
        &[("Authorization", &format!("Bearer {wrong}"))],
    );
    assert_eq!(a.status, 401);
    assert!(!a.body.contains(wrong));
    let owner = format!("Bearer {OWNER_TOKEN}");
    act(
        c.addr,
        OWNER_TOKEN,
        "checkout",
        r#"{"action":"pause","reason":"check logs"}"#,
    );
    let page = get(c.addr, "/apis/checkout", &[("Authorization", &owner)]);
    assert_eq!(page.status, 200);
    let metrics = get(c.addr, "/metrics", &[]);
    c.daemon.assert_running();
    let log = c.daemon.output();
    for token in [wrong, OWNER_TOKEN, VIEWER_TOKEN] {
        for (what, text) in [
            ("page", &page.body),
            ("metrics", &metrics.body),
            ("log", &log),
        ] {
            assert!(!text.contains(token), "{what} shows a token");
        }
    }
}

#[test]
fn the_openapi_document_describes_every_api_route() {
    let c = signed_in();
    let doc = get(c.addr, "/api/v1/openapi.json", &[]).json();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/v1/openapi.json",
        "/api/v1/me",
        "/api/v1/rollouts",
        "/api/v1/rollouts/{api}",
        "/api/v1/rollouts/{api}/audit",
        "/api/v1/rollouts/{api}/actions",
        "/api/v1/campaigns",
        "/api/v1/breakers",
        "/signin",
        "/signout",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    let actions = &paths["/api/v1/rollouts/{api}/actions"]["post"]["responses"];
    for code in ["200", "400", "401", "403", "404", "409", "413"] {
        assert!(
            actions.get(code).is_some(),
            "actions: {code} not documented"
        );
    }
    // Every documented action kind is accepted (none answers "unknown action").
    let kinds = doc["components"]["schemas"]["ActionRequest"]["properties"]["action"]["enum"]
        .as_array()
        .unwrap()
        .clone();
    for k in kinds {
        let a = act(
            c.addr,
            OWNER_TOKEN,
            "checkout",
            &format!(r#"{{"action":{k},"reason":"doc check","expected_revision":1}}"#),
        );
        assert!(!a.body.contains("unknown action"), "{k}: {}", a.body);
    }
}

/// `Cookie: greenlight_session=<id>`.
fn session(id: &str) -> String {
    format!("greenlight_session={id}")
}

#[test]
fn a_token_sign_in_opens_a_browser_session_until_sign_out() {
    let mut c = signed_in();
    // A browser without credentials is sent to the sign-in form; an API client gets 401 JSON.
    let page = get(c.addr, "/apis/checkout", &[("Accept", "text/html")]);
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.headers["location"], "/signin?next=%2Fapis%2Fcheckout");
    let api = get(c.addr, "/api/v1/rollouts", &[("Accept", "text/html")]);
    assert_eq!(api.status, 401);
    assert!(api.json()["error"].as_str().unwrap().contains("/signin"));

    let done = sign_in(c.addr, OWNER_TOKEN);
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.headers["location"], "/apis/checkout");
    let set = set_cookie(&done, "greenlight_session").expect("a session cookie");
    for attribute in ["Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=43200"] {
        assert!(set.contains(attribute), "{attribute} missing: {set}");
    }
    // Plain http on loopback: a Secure cookie would be dropped by the browser.
    assert!(!set.contains("Secure"), "{set}");
    let id = cookie_value(&set);
    assert!(id.len() >= 32, "an opaque id: {set}");
    assert!(!set.contains(OWNER_TOKEN), "the token is not the cookie");

    let me = get(c.addr, "/api/v1/me", &[("Cookie", &session(&id))]);
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["user"], "deploy-bot");
    assert_eq!(me.json()["via"], "session");
    assert_eq!(me.json()["roles"]["checkout"], "owner");

    // Writes from the session need the page's CSRF token, like any browser write.
    let page = get(c.addr, "/apis/checkout", &[("Cookie", &session(&id))]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("id=\"signout\""), "a sign-out button");
    let csrf = page_csrf(&page.body).expect("the page's CSRF token");
    let origin = format!("http://{}", c.addr);
    let action = r#"{"action":"start","reason":"signed in with a token"}"#;
    let without = request(
        c.addr,
        "POST",
        "/api/v1/rollouts/checkout/actions",
        &[
            ("Cookie", &session(&id)),
            ("Origin", &origin),
            ("Content-Type", "application/json"),
        ],
        Some(action),
        None,
    );
    assert_eq!(without.status, 403, "{}", without.body);
    let cookies = format!("{}; greenlight_csrf={csrf}", session(&id));
    let with = request(
        c.addr,
        "POST",
        "/api/v1/rollouts/checkout/actions",
        &[
            ("Cookie", &cookies),
            ("Origin", &origin),
            ("X-CSRF-Token", &csrf),
            ("Content-Type", "application/json"),
        ],
        Some(action),
        None,
    );
    assert_eq!(with.status, 200, "{}", with.body);
    assert_eq!(c.stack.state().unwrap()["intent"]["intent"], "start");
    let audit = get(
        c.addr,
        "/api/v1/rollouts/checkout/audit",
        &[("Cookie", &session(&id))],
    )
    .json();
    assert_eq!(
        audit.as_array().unwrap().last().unwrap()["user"],
        "deploy-bot"
    );

    // Signing out needs the CSRF token too, then the cookie is worth nothing.
    let signout = |csrf: &str| {
        request(
            c.addr,
            "POST",
            "/signout",
            &[
                ("Cookie", &cookies),
                ("Origin", &origin),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Some(&format!("csrf={}", form_encode(csrf))),
            None,
        )
    };
    assert_eq!(signout("forged").status, 403);
    assert_eq!(
        get(c.addr, "/api/v1/me", &[("Cookie", &session(&id))]).status,
        200
    );
    let out = signout(&csrf);
    assert_eq!(out.status, 303, "{}", out.body);
    assert_eq!(out.headers["location"], "/signin");
    assert!(set_cookie(&out, "greenlight_session")
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(
        get(c.addr, "/api/v1/me", &[("Cookie", &session(&id))]).status,
        401
    );
    c.daemon.assert_running();
    let log = c.daemon.output();
    assert!(log.contains("Signed in to the console"), "{log}");
    assert!(
        !log.contains(OWNER_TOKEN) && !log.contains(&id),
        "the log shows a secret"
    );
}

#[test]
fn wrong_tokens_at_sign_in_get_an_error_no_cookie_and_are_rate_limited() {
    let mut c = signed_in();
    let wrong = "gl-wrong-token-77c1-not-a-real-secret";
    for _ in 0..5 {
        let a = sign_in(c.addr, wrong);
        assert_eq!(a.status, 401, "{}", a.body);
        assert!(a.body.contains("That token is not valid."), "{}", a.body);
        assert!(a.body.contains("name=\"token\""), "the form again");
        assert!(!a.body.contains(wrong));
        assert_eq!(set_cookie(&a, "greenlight_session"), None);
    }
    // Too many failures from this address: even the right token waits.
    let held = sign_in(c.addr, OWNER_TOKEN);
    assert_eq!(held.status, 429, "{}", held.body);
    let wait: u64 = held.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert_eq!(set_cookie(&held, "greenlight_session"), None);
    // Another address is not held.
    let other = request(
        c.addr,
        "GET",
        "/signin",
        &[("Accept", "text/html")],
        None,
        Some("127.0.0.2".parse().unwrap()),
    );
    assert_eq!(other.status, 200);
    c.daemon.assert_running();
    let log = c.daemon.output();
    assert!(log.contains("Refused a console sign-in"), "{log}");
    assert!(
        !log.contains(wrong) && !log.contains(OWNER_TOKEN),
        "the log shows a token"
    );
}

#[test]
fn a_cross_site_or_forged_sign_in_is_refused() {
    let c = signed_in();
    let form = get(c.addr, "/signin", &[("Accept", "text/html")]);
    let csrf = cookie_value(&set_cookie(&form, "greenlight_signin").unwrap());
    let post = |origin: &str, cookie_csrf: &str, field_csrf: &str| {
        request(
            c.addr,
            "POST",
            "/signin",
            &[
                ("Origin", origin),
                ("Cookie", &format!("greenlight_signin={cookie_csrf}")),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Some(&format!(
                "csrf={}&token={}",
                form_encode(field_csrf),
                form_encode(OWNER_TOKEN)
            )),
            None,
        )
    };
    let origin = format!("http://{}", c.addr);
    let cross = post("https://evil.example", &csrf, &csrf);
    assert_eq!(cross.status, 403, "{}", cross.body);
    assert!(cross.body.contains("cross-site request refused"));
    let forged = post(&origin, "abc.def", "abc.def");
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("CSRF"));
    for a in [&cross, &forged] {
        assert_eq!(set_cookie(a, "greenlight_session"), None);
    }
    // A made-up session cookie is no session.
    let made_up = session(&"ab".repeat(32));
    assert_eq!(
        get(c.addr, "/api/v1/me", &[("Cookie", &made_up)]).status,
        401
    );
    // The genuine form from this origin signs in.
    assert_eq!(post(&origin, &csrf, &csrf).status, 303);
}

#[test]
fn an_expired_session_cookie_gets_401() {
    let section =
        console_section().replacen("[console]\n", "[console]\nsession_lifetime = \"2s\"\n", 1);
    let c = console(&section);
    wait_ready(c.addr, OWNER_TOKEN, "checkout");
    let done = sign_in(c.addr, OWNER_TOKEN);
    assert_eq!(done.status, 303, "{}", done.body);
    let set = set_cookie(&done, "greenlight_session").unwrap();
    assert!(set.contains("Max-Age=2"), "{set}");
    let cookie = session(&cookie_value(&set));
    // Sent on after its lifetime (as a browser whose clock lags would), it is refused.
    assert_eq!(
        get(c.addr, "/api/v1/me", &[("Cookie", &cookie)]).status,
        200
    );
    support::eventually(
        "the session's expiry",
        std::time::Duration::from_secs(10),
        || (get(c.addr, "/api/v1/me", &[("Cookie", &cookie)]).status == 401).then_some(()),
    );
}

#[test]
fn a_sticky_rollout_shows_the_users_on_green_and_its_subsets() {
    let traffic = "haproxy = { backend = \"api_checkout\", blue = \"blue\", green = \"green\" }\n";
    let sticky = policy_with(&format!("{ACCESS}\nauto_start = false")).replacen(
        traffic,
        &format!(
            "{traffic}mode = \"sticky\"\n[traffic.sticky]\nkey = {{ header = \"X-User-Id\" }}\n\
             [[traffic.sticky.subset]]\nname = \"beta\"\ncolour = \"green\"\nmembers = [\"alice\", \"bob\"]\n"
        ),
        1,
    );
    assert!(sticky.contains("[traffic.sticky]"), "{sticky}");
    let stack = Stack::start_with(&sticky, false);
    let addr = listen_addr();
    let cfg = stack.config_with("a", addr, &Stack::unreachable_url(), &console_section());
    let _daemon = stack.daemon("a", &cfg, &[]);
    wait_ready(addr, OWNER_TOKEN, "checkout");
    let auth = format!("Bearer {OWNER_TOKEN}");
    let view = get(
        addr,
        "/api/v1/rollouts/checkout",
        &[("Authorization", &auth)],
    )
    .json();
    assert_eq!(view["sticky"]["share_percent"], 0.0, "{view:#}");
    assert_eq!(view["sticky"]["on_green"], "no users", "{view:#}");
    assert_eq!(
        view["sticky"]["subsets"],
        serde_json::json!([{ "name": "beta", "colour": "green", "members": 2 }]),
        "{view:#}"
    );
    let page = get(addr, "/apis/checkout", &[("Authorization", &auth)]);
    assert!(
        page.body.contains("Users on green</")
            && page.body.contains("subsets: beta (green, 2 members)"),
        "{}",
        page.body
    );
}
