//! PromQL HTTP client for VictoriaMetrics and Prometheus, and decoding of its responses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Deserialize;
use tracing::debug;

use super::batcher::{BatchStats, Batcher};
use super::{Auth, Backend, MetricsSettings};

/// Largest response body accepted; a bigger one is [`QueryError::TooLarge`].
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Longest excerpt of an error body kept in [`QueryError::Http`].
const EXCERPT_CHARS: usize = 512;

/// A failed query. Callers branch on the variant: a syntax error is a policy bug, the others are
/// backend trouble; all of them mean "no usable data this window".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// The backend rejected the query text (VictoriaMetrics 422, Prometheus 400 `bad_data`).
    #[error("query rejected: {message}")]
    Syntax { message: String },
    /// Any other non-success answer.
    #[error("HTTP {status}: {body}")]
    Http { status: u16, body: String },
    /// No complete answer within the configured timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection could not be made (refused, DNS, TLS).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The answer is not JSON, or not the shape of a PromQL API response.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The answer is larger than the body cap.
    #[error("response larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// The settings cannot make a client.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid metrics URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub time: Timestamp,
    pub value: f64,
}

/// One series of a range query.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(Timestamp, f64)>,
}

/// A decoded PromQL result.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryResult {
    Vector(Vec<Sample>),
    Scalar { time: Timestamp, value: f64 },
    Matrix(Vec<Series>),
    String { time: Timestamp, value: String },
}

/// A PromQL API client. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct PromClient {
    http: reqwest::Client,
    base: String,
    kind: Backend,
    timeout: Duration,
    auth: Option<Auth>,
    max_body: usize,
    /// Answers queries of the same shape together (see [`super::batch`]); `None`: one by one.
    batcher: Option<Arc<Batcher>>,
}

impl PromClient {
    pub fn new(settings: MetricsSettings) -> Result<PromClient, SettingsError> {
        let parsed = reqwest::Url::parse(&settings.url).map_err(|e| SettingsError::Url {
            url: settings.url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(SettingsError::Url {
                url: settings.url.clone(),
                reason: "scheme must be http or https".into(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build()
            .map_err(|e| SettingsError::Client(e.to_string()))?;
        Ok(PromClient {
            http,
            base: settings.url.trim_end_matches('/').to_string(),
            kind: settings.kind,
            timeout: settings.timeout,
            auth: settings.auth,
            max_body: MAX_BODY_BYTES,
            batcher: None,
        })
    }

    /// Lowers the body cap (tests exercise [`QueryError::TooLarge`] with it).
    pub fn with_max_body(mut self, bytes: usize) -> PromClient {
        self.max_body = bytes;
        self
    }

    /// Answers the instant queries that differ only in label values (the same template for
    /// other APIs and colours, asked for the same time) with one query of up to `max` of them
    /// (see [`super::batch`]); `max` below 2 leaves every query alone. Set it last: the
    /// batches use the client as it is now.
    pub fn with_batching(mut self, max: usize) -> PromClient {
        self.batcher = None;
        if max >= 2 {
            let direct = self.clone();
            self.batcher = Some(Arc::new(Batcher::new(direct, max)));
        }
        self
    }

    /// How the queries were sent so far; `None` without batching.
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.batcher.as_ref().map(|b| b.stats())
    }

    pub fn backend(&self) -> Backend {
        self.kind
    }

    /// Evaluates `query` at `time` (`POST /api/v1/query`).
    pub async fn instant(&self, query: &str, time: Timestamp) -> Result<QueryResult, QueryError> {
        match &self.batcher {
            Some(batcher) => batcher.instant(query, time).await,
            None => self.instant_alone(query, time).await,
        }
    }

    /// Evaluates `query` at `time` on its own, batching or not.
    pub(super) async fn instant_alone(
        &self,
        query: &str,
        time: Timestamp,
    ) -> Result<QueryResult, QueryError> {
        let mut form = vec![("query", query.to_string()), ("time", api_time(time))];
        self.cache_control(&mut form);
        self.post("/api/v1/query", &form).await
    }

    /// Evaluates `query` from `start` to `end` every `step` (`POST /api/v1/query_range`).
    pub async fn range(
        &self,
        query: &str,
        start: Timestamp,
        end: Timestamp,
        step: Duration,
    ) -> Result<QueryResult, QueryError> {
        let mut form = vec![
            ("query", query.to_string()),
            ("start", api_time(start)),
            ("end", api_time(end)),
            ("step", format!("{:.3}", step.as_secs_f64())),
        ];
        self.cache_control(&mut form);
        self.post("/api/v1/query_range", &form).await
    }

    /// VictoriaMetrics' result cache rounds times to the step; ask it not to.
    fn cache_control(&self, form: &mut Vec<(&'static str, String)>) {
        if self.kind == Backend::VictoriaMetrics {
            form.push(("nocache", "1".into()));
        }
    }

    async fn post(
        &self,
        path: &str,
        form: &[(&'static str, String)],
    ) -> Result<QueryResult, QueryError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.post(&url).form(form);
        match &self.auth {
            Some(Auth::Bearer(token)) => req = req.bearer_auth(token),
            Some(Auth::Basic { user, password }) => req = req.basic_auth(user, Some(password)),
            None => {}
        }
        let mut resp = req.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return Err(QueryError::TooLarge {
                limit: self.max_body,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(e))? {
            if body.len() + chunk.len() > self.max_body {
                return Err(QueryError::TooLarge {
                    limit: self.max_body,
                });
            }
            body.extend_from_slice(&chunk);
        }
        debug!(%url, status, bytes = body.len(), "Received a PromQL answer.");
        decode(self.kind, status, &body)
    }

    fn transport_error(&self, e: reqwest::Error) -> QueryError {
        if e.is_connect() {
            QueryError::Unreachable(error_chain(&e))
        } else if e.is_timeout() {
            QueryError::Timeout(self.timeout)
        } else {
            QueryError::Unreachable(error_chain(&e))
        }
    }
}

/// The error and its causes on one line (reqwest's top-level message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Seconds since the epoch with millisecond precision, as both APIs accept.
fn api_time(t: Timestamp) -> String {
    let ms = t.as_millisecond();
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    format!("{sign}{}.{:03}", ms / 1000, ms % 1000)
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct RawSample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

#[derive(Deserialize)]
struct RawSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// Decodes an HTTP answer of the PromQL API (`status` is the HTTP status code).
pub fn decode(backend: Backend, status: u16, body: &[u8]) -> Result<QueryResult, QueryError> {
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) if (200..300).contains(&status) => {
            return Err(QueryError::Malformed(format!(
                "not a PromQL API answer ({e}): {}",
                excerpt(body)
            )))
        }
        Err(_) => {
            return Err(QueryError::Http {
                status,
                body: excerpt(body),
            })
        }
    };
    if envelope.status != "success" {
        let message = envelope.error.unwrap_or_default();
        let error_type = envelope.error_type.unwrap_or_default();
        let syntax = match backend {
            Backend::VictoriaMetrics => status == 422,
            Backend::Prometheus => error_type == "bad_data",
        };
        if syntax {
            return Err(QueryError::Syntax { message });
        }
        return Err(QueryError::Http {
            status,
            body: truncate(&format!("{error_type}: {message}")),
        });
    }
    if !(200..300).contains(&status) {
        return Err(QueryError::Http {
            status,
            body: excerpt(body),
        });
    }
    let data = envelope
        .data
        .ok_or_else(|| QueryError::Malformed("success without data".into()))?;
    decode_data(data)
}

fn decode_data(data: Data) -> Result<QueryResult, QueryError> {
    let shape = |e: serde_json::Error| {
        QueryError::Malformed(format!("unexpected {} result: {e}", data.result_type))
    };
    match data.result_type.as_str() {
        "vector" => {
            let raw: Vec<RawSample> = serde_json::from_value(data.result.clone()).map_err(shape)?;
            let samples = raw
                .into_iter()
                .map(|s| {
                    Ok(Sample {
                        labels: s.metric,
                        time: timestamp(s.value.0)?,
                        value: number(&s.value.1)?,
                    })
                })
                .collect::<Result<_, QueryError>>()?;
            Ok(QueryResult::Vector(samples))
        }
        "matrix" => {
            let raw: Vec<RawSeries> = serde_json::from_value(data.result.clone()).map_err(shape)?;
            let series = raw
                .into_iter()
                .map(|s| {
                    let points = s
                        .values
                        .iter()
                        .map(|(t, v)| Ok((timestamp(*t)?, number(v)?)))
                        .collect::<Result<_, QueryError>>()?;
                    Ok(Series {
                        labels: s.metric,
                        points,
                    })
                })
                .collect::<Result<_, QueryError>>()?;
            Ok(QueryResult::Matrix(series))
        }
        "scalar" => {
            let (t, v): (f64, String) =
                serde_json::from_value(data.result.clone()).map_err(shape)?;
            Ok(QueryResult::Scalar {
                time: timestamp(t)?,
                value: number(&v)?,
            })
        }
        "string" => {
            let (t, v): (f64, String) =
                serde_json::from_value(data.result.clone()).map_err(shape)?;
            Ok(QueryResult::String {
                time: timestamp(t)?,
                value: v,
            })
        }
        other => Err(QueryError::Malformed(format!(
            "unknown resultType {other:?}"
        ))),
    }
}

/// A sample value as the APIs write it: a decimal string, `NaN`, `+Inf` or `-Inf`.
fn number(s: &str) -> Result<f64, QueryError> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s
            .parse::<f64>()
            .map_err(|_| QueryError::Malformed(format!("sample value {s:?} is not a number"))),
    }
}

/// Seconds since the epoch (integer for VictoriaMetrics, fractional for Prometheus).
fn timestamp(seconds: f64) -> Result<Timestamp, QueryError> {
    let ms = (seconds * 1000.0).round();
    if !ms.is_finite() {
        return Err(QueryError::Malformed(format!("bad timestamp {seconds}")));
    }
    Timestamp::from_millisecond(ms as i64)
        .map_err(|e| QueryError::Malformed(format!("bad timestamp {seconds}: {e}")))
}

fn excerpt(body: &[u8]) -> String {
    truncate(String::from_utf8_lossy(body).trim())
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: Backend = Backend::VictoriaMetrics;
    const PROM: Backend = Backend::Prometheus;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn vm_empty_vector_for_no_match_and_nan() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(decode(VM, 200, body), Ok(QueryResult::Vector(vec![])));
    }

    #[test]
    fn vm_division_by_zero_is_an_infinite_vector_sample() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1795754059,"+Inf"]}]}}"#;
        let QueryResult::Vector(v) = decode(VM, 200, body).unwrap() else {
            panic!("not a vector")
        };
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].value, f64::INFINITY);
        assert_eq!(v[0].time, ts(1795754059));
        assert!(v[0].labels.is_empty());
    }

    #[test]
    fn prometheus_nan_vector_and_scalar_infinity() {
        let nan = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1795754059.123,"NaN"]}]}}"#;
        let QueryResult::Vector(v) = decode(PROM, 200, nan).unwrap() else {
            panic!("not a vector")
        };
        assert!(v[0].value.is_nan());
        assert_eq!(v[0].time.as_millisecond(), 1795754059123);

        let inf = br#"{"status":"success","data":{"resultType":"scalar","result":[1795754059.5,"+Inf"]}}"#;
        assert_eq!(
            decode(PROM, 200, inf),
            Ok(QueryResult::Scalar {
                time: Timestamp::from_millisecond(1795754059500).unwrap(),
                value: f64::INFINITY
            })
        );
        let neg = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"-Inf"]}}"#;
        assert_eq!(
            decode(PROM, 200, neg),
            Ok(QueryResult::Scalar {
                time: ts(1),
                value: f64::NEG_INFINITY
            })
        );
    }

    #[test]
    fn labelled_vector_and_matrix_and_string() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"le":"+Inf"},"value":[10,"7"]},{"metric":{"le":"0.25"},"value":[10,"3.5"]}]}}"#;
        let QueryResult::Vector(v) = decode(VM, 200, body).unwrap() else {
            panic!("not a vector")
        };
        assert_eq!(v[0].labels["le"], "+Inf");
        assert_eq!(v[1].value, 3.5);

        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"color":"green"},"values":[[60,"1"],[120,"2e3"]]}]}}"#;
        assert_eq!(
            decode(PROM, 200, body),
            Ok(QueryResult::Matrix(vec![Series {
                labels: [("color".to_string(), "green".to_string())].into(),
                points: vec![(ts(60), 1.0), (ts(120), 2000.0)],
            }]))
        );

        let body = br#"{"status":"success","data":{"resultType":"string","result":[5,"hello"]}}"#;
        assert_eq!(
            decode(PROM, 200, body),
            Ok(QueryResult::String {
                time: ts(5),
                value: "hello".into()
            })
        );
    }

    #[test]
    fn syntax_errors_per_backend() {
        let vm = br#"{"status":"error","errorType":"422","error":"error when executing query=\"sum(\": cannot parse"}"#;
        match decode(VM, 422, vm) {
            Err(QueryError::Syntax { message }) => assert!(message.contains("cannot parse")),
            other => panic!("{other:?}"),
        }
        let prom = br#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unclosed left parenthesis"}"#;
        match decode(PROM, 400, prom) {
            Err(QueryError::Syntax { message }) => assert!(message.contains("parse error")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_api_errors_keep_status_and_message() {
        let prom = br#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#;
        match decode(PROM, 503, prom) {
            Err(QueryError::Http { status, body }) => {
                assert_eq!(status, 503);
                assert!(body.contains("timed out"), "{body}");
            }
            other => panic!("{other:?}"),
        }
        // A proxy in front of the backend answering HTML.
        let html = "<html>".to_string() + &"x".repeat(5000) + "</html>";
        match decode(VM, 502, html.as_bytes()) {
            Err(QueryError::Http { status, body }) => {
                assert_eq!(status, 502);
                assert!(body.starts_with("<html>"));
                assert!(body.chars().count() <= EXCERPT_CHARS + 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_answers() {
        for body in [
            &b"hello"[..],
            br#"{"status":"success"}"#,
            br#"{"status":"success","data":{"resultType":"vector","result":{"a":1}}}"#,
            br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"abc"]}]}}"#,
            br#"{"status":"success","data":{"resultType":"histogram","result":[]}}"#,
            br#"{"status":"success","data":{"resultType":"scalar","result":[1]}}"#,
        ] {
            assert!(
                matches!(decode(VM, 200, body), Err(QueryError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn api_time_has_millisecond_precision() {
        assert_eq!(
            api_time(Timestamp::from_millisecond(1795754059007).unwrap()),
            "1795754059.007"
        );
        assert_eq!(api_time(ts(60)), "60.000");
    }
}
