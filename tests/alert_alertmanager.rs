//! Alert delivery against a real Alertmanager 0.25 and in-test HTTP receivers: payloads,
//! resolution, signatures, and the outbox surviving a restart with exactly-once delivery.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Router;
use greenlight::alert::{AlertEvent, ChannelKind, ChannelSettings, EventKind, Notifier, Outbox};
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use sha2::Sha256;
use support::alertmanager::Alertmanager;
use support::{eventually, free_port};

const TIMEOUT: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(30);

/// One request received by the in-test HTTP server.
#[derive(Clone, Debug)]
struct Hit {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Hit {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Clone)]
struct ReceiverState {
    hits: Arc<Mutex<Vec<Hit>>>,
    status: Arc<AtomicU16>,
}

/// An HTTP server recording every request and answering with a settable status.
struct Receiver {
    addr: SocketAddr,
    state: ReceiverState,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start_on(port: u16) -> Receiver {
        let state = ReceiverState {
            hits: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
        };
        let app = Router::new().fallback(record).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("receiver serves");
        });
        Receiver { addr, state, task }
    }

    async fn start() -> Receiver {
        Receiver::start_on(0).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        self.state
            .hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }

    fn answer(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(state): State<ReceiverState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    state.hits.lock().unwrap().push(Hit {
        path: uri.path().to_string(),
        headers,
        body,
    });
    StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK)
}

fn am_channel(name: &str, url: String) -> ChannelSettings {
    ChannelSettings {
        name: name.to_string(),
        kind: ChannelKind::AlertmanagerUrl(url),
    }
}

fn webhook_channel(name: &str, url: String, secret: Option<&str>) -> ChannelSettings {
    ChannelSettings {
        name: name.to_string(),
        kind: ChannelKind::Webhook {
            url,
            hmac_secret: secret.map(str::to_string),
        },
    }
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A rollback of checkout with the numbers an on-call engineer needs.
fn rollback(rollout: &str) -> AlertEvent {
    AlertEvent::new(
        "checkout",
        EventKind::Rollback,
        rollout,
        "Rolled back green from 10% to 0%: error rate 4.24% vs 0.51%",
        Timestamp::now(),
    )
    .with_description(
        "Green's error rate is worse than blue's beyond the 20% tolerance.\n\
         The error-rate e-process reached 131.2, above the threshold 1/α = 100.",
    )
    .with_field("green_weight_before", "10")
    .with_field("green_weight_after", "0")
    .with_field("step", "2")
    .with_field("green_requests", "5000")
    .with_field("green_errors", "212")
    .with_field("green_error_rate", "0.0424")
    .with_field("blue_error_rate", "0.0051")
    .with_field("statistic", "131.2")
    .with_field("threshold", "100")
    .with_query(r#"sum(increase(haproxy_server_http_responses_total{proxy="api_checkout",server="green",code="5xx"}[1m]))"#)
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn outbox_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_alert_appears_in_alertmanager_with_its_numbers() {
    let am = Alertmanager::start(None);
    let dir = tempfile::tempdir().unwrap();
    let notifier = Notifier::new(vec![am_channel("am", am.url())], dir.path(), TIMEOUT).unwrap();

    let report = notifier
        .notify(&rollback("r1"), &names(&["am"]))
        .await
        .unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(notifier.deliveries(), 1);
    assert_eq!(notifier.outbox_depth(), 0);
    assert!(outbox_files(dir.path()).is_empty());

    let alerts = am.alerts(&[r#"api="checkout""#], "");
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a["labels"]["alertname"], "GreenlightRollback");
    assert_eq!(a["labels"]["api"], "checkout");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["status"]["state"], "active");
    let ann = &a["annotations"];
    assert!(ann["summary"].as_str().unwrap().contains("10% to 0%"));
    assert!(ann["description"].as_str().unwrap().contains("131.2"));
    for (field, value) in [
        ("green_weight_before", "10"),
        ("green_weight_after", "0"),
        ("green_requests", "5000"),
        ("green_errors", "212"),
        ("green_error_rate", "0.0424"),
        ("blue_error_rate", "0.0051"),
        ("statistic", "131.2"),
        ("threshold", "100"),
    ] {
        assert_eq!(ann[field], value, "annotation {field} in {ann:#}");
    }
    assert!(ann["queries"].as_str().unwrap().contains("code=\"5xx\""));
    // Other APIs' filters do not match it.
    assert!(am.alerts(&[r#"api="payments""#], "").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolving_ends_the_alert_in_alertmanager() {
    let sink = Receiver::start().await;
    let am = Alertmanager::start(Some(&sink.url("/am")));
    let dir = tempfile::tempdir().unwrap();
    let notifier = Notifier::new(vec![am_channel("am", am.url())], dir.path(), TIMEOUT).unwrap();

    let firing = rollback("r2");
    notifier.notify(&firing, &names(&["am"])).await.unwrap();
    assert_eq!(am.alerts(&[r#"api="checkout""#], "active=true").len(), 1);
    // Alertmanager's own notification shows it firing.
    eventually("a firing notification", DEADLINE, || {
        sink.hits("/am")
            .iter()
            .any(|h| h.json()["status"] == "firing")
            .then_some(())
    });

    let ended_at = Timestamp::now();
    let report = notifier
        .notify(&firing.resolve(ended_at), &names(&["am"]))
        .await
        .unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");

    // No longer active: Alertmanager lists resolved alerts under neither state.
    assert!(am.alerts(&[r#"api="checkout""#], "active=true").is_empty());
    assert!(am
        .alerts(&[r#"api="checkout""#], "active=false")
        .iter()
        .all(|a| a["status"]["state"] != "active"));
    // Alertmanager sends the resolution on, with our end time.
    let resolved = eventually("a resolved notification", DEADLINE, || {
        sink.hits("/am")
            .into_iter()
            .map(|h| h.json())
            .find(|n| n["status"] == "resolved")
    });
    let alert = &resolved["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "GreenlightRollback");
    assert_eq!(alert["status"], "resolved");
    let ends_at: Timestamp = alert["endsAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        ends_at.as_millisecond(),
        ended_at.as_millisecond(),
        "endsAt {ends_at} vs {ended_at}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_survives_a_restart_and_delivers_exactly_once() {
    let am_port = free_port();
    let hook_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let channels = vec![
        am_channel("am", format!("http://127.0.0.1:{am_port}")),
        webhook_channel(
            "hook",
            format!("http://127.0.0.1:{hook_port}/hook"),
            Some("s3cret"),
        ),
    ];
    let event = rollback("r3");

    // Nobody listens: the alert is recorded, not lost. Notifying twice keeps one entry each.
    {
        let notifier = Notifier::new(channels.clone(), dir.path(), TIMEOUT).unwrap();
        for _ in 0..2 {
            let report = notifier
                .notify(&event, &names(&["am", "hook"]))
                .await
                .unwrap();
            assert_eq!(report.delivered, 0, "{report:?}");
            assert_eq!(report.retrying, 2, "{report:?}");
        }
        assert_eq!(notifier.outbox_depth(), 2);
        assert_eq!(notifier.deliveries(), 0);
    } // the daemon stops
    let waiting = Outbox::open(dir.path()).unwrap().pending().unwrap().entries;
    assert_eq!(waiting.len(), 2);
    assert!(waiting
        .iter()
        .all(|e| e.attempts >= 1 && e.last_error.is_some()));

    // The receivers come up, the daemon restarts on the same outbox and flushes at start.
    let am = Alertmanager::start_on(am_port, None);
    let hook = Receiver::start_on(hook_port).await;
    let notifier = Notifier::new(channels, dir.path(), TIMEOUT).unwrap();
    assert_eq!(notifier.outbox_depth(), 2);
    let report = notifier.flush().await;
    assert_eq!(report.delivered, 2, "{report:?}");
    // Later ticks find nothing left to send.
    let report = notifier.flush().await;
    assert_eq!(report.delivered, 0, "{report:?}");
    assert_eq!(notifier.deliveries(), 2);
    assert_eq!(notifier.outbox_depth(), 0);
    assert!(
        outbox_files(dir.path()).is_empty(),
        "{:?}",
        outbox_files(dir.path())
    );

    let hits = hook.hits("/hook");
    assert_eq!(hits.len(), 1, "webhook received {} POSTs", hits.len());
    let received: AlertEvent = serde_json::from_value(hits[0].json()["event"].clone()).unwrap();
    assert_eq!(received, event);
    let alerts = am.alerts(&[r#"api="checkout""#], "");
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(
        alerts[0]["labels"]["greenlight_key"],
        "checkout/rollback/r3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_webhook_payloads_are_readable_and_signed() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let channels = vec![
        ChannelSettings {
            name: "slack".into(),
            kind: ChannelKind::Slack {
                webhook_url: rx.url("/slack"),
            },
        },
        webhook_channel("signed", rx.url("/signed"), Some("topsecret")),
        webhook_channel("plain", rx.url("/plain"), None),
    ];
    let notifier = Notifier::new(channels, dir.path(), TIMEOUT).unwrap();
    let event = rollback("r4").with_link("http://vm.example:8428/vmui/#/?g0.expr=up");
    let report = notifier
        .notify(&event, &names(&["slack", "signed", "plain"]))
        .await
        .unwrap();
    assert_eq!(report.delivered, 3, "{report:?}");

    let slack = rx.hits("/slack");
    assert_eq!(slack.len(), 1);
    assert_eq!(
        slack[0].headers["content-type"].to_str().unwrap(),
        "application/json"
    );
    let text = slack[0].json()["text"].as_str().unwrap().to_string();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        ":rotating_light: *[CRITICAL] checkout: Rolled back green from 10% to 0%: error rate 4.24% vs 0.51%*"
    );
    for expected in [
        "• green_weight_before: 10",
        "• green_weight_after: 0",
        "• green_requests: 5000",
        "• green_errors: 212",
        "• statistic: 131.2",
        "• threshold: 100",
        "<http://vm.example:8428/vmui/#/?g0.expr=up|Graph>",
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "{expected:?} missing in:\n{text}"
        );
    }

    let signed = rx.hits("/signed");
    assert_eq!(signed.len(), 1);
    let header = signed[0].headers["x-greenlight-signature"]
        .to_str()
        .unwrap();
    assert_eq!(
        header,
        format!("sha256={}", hmac_hex("topsecret", &signed[0].body))
    );
    assert_ne!(
        header,
        format!("sha256={}", hmac_hex("wrong", &signed[0].body))
    );
    let body = signed[0].json();
    assert_eq!(body["version"], 1);
    assert_eq!(body["event"]["kind"], "rollback");
    assert_eq!(body["event"]["severity"], "critical");
    assert_eq!(body["event"]["fields"]["green_errors"], "212");
    let back: AlertEvent = serde_json::from_value(body["event"].clone()).unwrap();
    assert_eq!(back, event);

    let plain = rx.hits("/plain");
    assert_eq!(plain.len(), 1);
    assert!(plain[0].headers.get("x-greenlight-signature").is_none());
    assert_eq!(plain[0].body, signed[0].body, "same schema signed or not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_alerts_are_set_aside_and_server_errors_retried() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let channels = vec![webhook_channel("hook", rx.url("/hook"), None)];
    let notifier = Notifier::new(channels, dir.path(), TIMEOUT).unwrap();

    // 400: retrying cannot help; the entry is moved aside as .failed and never resent.
    rx.answer(400);
    let report = notifier
        .notify(&rollback("bad"), &names(&["hook"]))
        .await
        .unwrap();
    assert_eq!(report.rejected, 1, "{report:?}");
    let files = outbox_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(".json.failed"), "{files:?}");
    assert_eq!(notifier.outbox_depth(), 0);

    // 503: kept for a retry, delivered once the receiver recovers.
    rx.answer(503);
    let report = notifier
        .notify(&rollback("later"), &names(&["hook"]))
        .await
        .unwrap();
    assert_eq!(report.retrying, 1, "{report:?}");
    assert_eq!(notifier.outbox_depth(), 1);
    rx.answer(200);
    let report = notifier.flush().await; // the first flush retries everything
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(notifier.outbox_depth(), 0);
    assert_eq!(rx.hits("/hook").len(), 3, "400 once, 503 once, 200 once");
    assert_eq!(notifier.failures(), 2);
    assert_eq!(notifier.deliveries(), 1);
}
