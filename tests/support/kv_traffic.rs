//! Traffic for many APIs at once whose weights live in Consul KV: four times a second, 40
//! requests per API split by its blue and green weights, imported into VictoriaMetrics as
//! `<metric>{api, cluster=<colour>, code}` counters, each colour answering its share of errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::http;

/// Per API, the fraction of blue's and of green's requests that fail.
pub type Rates = BTreeMap<String, (f64, f64)>;

pub struct KvTraffic {
    stop: Arc<AtomicBool>,
    rates: Arc<Mutex<Rates>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KvTraffic {
    pub fn start(consul: SocketAddr, vm: SocketAddr, metric: &'static str, rates: Rates) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rates = Arc::new(Mutex::new(rates));
        let (stop2, rates2) = (stop.clone(), rates.clone());
        let thread = std::thread::spawn(move || {
            let mut counters: BTreeMap<(String, &str, &str), f64> = BTreeMap::new();
            while !stop2.load(Ordering::SeqCst) {
                let now_rates = rates2.lock().unwrap().clone();
                for (api, (blue_rate, green_rate)) in &now_rates {
                    let blue = weight(consul, api, "blue").unwrap_or(100.0);
                    let green = weight(consul, api, "green").unwrap_or(0.0);
                    let total = (blue + green).max(1.0);
                    for (colour, w, rate) in
                        [("blue", blue, blue_rate), ("green", green, green_rate)]
                    {
                        let n = (40.0 * w / total).round();
                        let errors = n * rate;
                        *counters.entry((api.clone(), colour, "200")).or_insert(0.0) += n - errors;
                        *counters.entry((api.clone(), colour, "500")).or_insert(0.0) += errors;
                    }
                }
                let now = jiff::Timestamp::now().as_millisecond();
                let body: String = counters
                    .iter()
                    .map(|((api, colour, code), v)| {
                        format!(
                            "{metric}{{api=\"{api}\",cluster=\"{colour}\",code=\"{code}\"}} {v} {now}\n"
                        )
                    })
                    .collect();
                let _ = http(vm, "POST", "/api/v1/import/prometheus", body.as_bytes());
                let _ = http(vm, "GET", "/internal/force_flush", b"");
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        KvTraffic {
            stop,
            rates,
            thread: Some(thread),
        }
    }

    /// From now on `api`'s blue and green fail at these rates.
    pub fn set(&self, api: &str, blue: f64, green: f64) {
        self.rates
            .lock()
            .unwrap()
            .insert(api.to_string(), (blue, green));
    }
}

impl Drop for KvTraffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `api`'s `colour` weight in Consul.
pub fn weight(consul: SocketAddr, api: &str, colour: &str) -> Option<f64> {
    let (code, body) = http(consul, "GET", &format!("/v1/kv/w/{api}/{colour}?raw"), b"").ok()?;
    (code == 200).then(|| body.trim().parse().ok())?
}
