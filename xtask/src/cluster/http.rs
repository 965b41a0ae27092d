//! Calls to a runner's gateway, classified by what they tell about the call's effect.

use std::io::ErrorKind;
use std::time::Duration;

/// The header that makes a persisted call idempotent: a retry with the same key is answered with
/// the first attempt's reply instead of being applied again.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header giving the runtime a call's deadline.
pub(crate) const TIMEOUT_HEADER: &str = "x-shoal-timeout-ms";

/// What one HTTP call to `POST /v1/entities/...` came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 200 with this body.
    Ok(String),
    /// Refused before the entity could act (no owner yet, shutting down, mailbox full,
    /// connection refused): safe to send again.
    Refused(String),
    /// The call may or may not have taken effect (connection lost after sending, owner
    /// unreachable mid-call, interrupted, deadline, any other 5xx): send again with the same
    /// idempotency key.
    Unknown(String),
    /// An answer the counter should never give (a 4xx other than 409 and 429): status and code.
    Failed(String),
}

/// One call to send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    /// The counter id.
    pub(crate) id: &'a str,
    /// `increment` or `get`.
    pub(crate) tag: &'a str,
    /// The JSON body.
    pub(crate) body: &'a str,
    /// Sent as `Idempotency-Key` when set.
    pub(crate) key: Option<&'a str>,
    /// Sent as `x-shoal-timeout-ms`.
    pub(crate) deadline_ms: u64,
}

/// A blocking HTTP client for one thread (keeps its connections).
pub(crate) struct Client {
    agent: ureq::Agent,
}

impl Client {
    /// A client whose calls give up after `timeout` (a timeout is an unknown outcome).
    pub(crate) fn new(timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(Duration::from_secs(2)))
            .build()
            .into();
        Self { agent }
    }

    /// `POST {gateway}/v1/entities/counter/{id}/{tag}`.
    pub(crate) fn call(&self, gateway: &str, call: Call<'_>) -> Outcome {
        let url = format!("{gateway}/v1/entities/counter/{}/{}", call.id, call.tag);
        let mut request = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .header(TIMEOUT_HEADER, &call.deadline_ms.to_string());
        if let Some(key) = call.key {
            request = request.header(IDEMPOTENCY_KEY, key);
        }
        let mut response = match request.send(call.body) {
            Ok(response) => response,
            Err(error) => return classify_error(&error),
        };
        let status = response.status().as_u16();
        let text = match response.body_mut().read_to_string() {
            Ok(text) => text,
            Err(e) => return Outcome::Unknown(format!("reading the reply failed: {e}")),
        };
        if status == 200 {
            return Outcome::Ok(text);
        }
        classify_status(status, &text)
    }

    /// `GET {url}`: the status, or `None` when nothing answered.
    pub(crate) fn get_status(&self, url: &str) -> Option<u16> {
        self.agent.get(url).call().ok().map(|mut response| {
            // Drain the body so the connection can be reused.
            let _ = response.body_mut().read_to_string();
            response.status().as_u16()
        })
    }
}

/// Classifies an error answer by status and the JSON `code`.
fn classify_status(status: u16, text: &str) -> Outcome {
    let code = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let label = format!("{status} {code}");
    match (status, code.as_str()) {
        (503, "entity_not_assigned" | "shutting_down") | (429, _) => Outcome::Refused(label),
        (409, _) | (500..=599, _) => Outcome::Unknown(label),
        _ => Outcome::Failed(format!("{label}: {text}")),
    }
}

fn classify_error(error: &ureq::Error) -> Outcome {
    match error {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            Outcome::Refused(format!("connection failed: {error}"))
        }
        ureq::Error::Io(e) if e.kind() == ErrorKind::ConnectionRefused => {
            Outcome::Refused("connection refused".to_owned())
        }
        ureq::Error::Timeout(ureq::Timeout::Connect) => {
            Outcome::Refused("connect timed out".to_owned())
        }
        ureq::Error::Timeout(_) => Outcome::Unknown("client timeout".to_owned()),
        other => Outcome::Unknown(format!("connection lost: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Outcome {
        fn is_retryable(&self) -> bool {
            matches!(self, Outcome::Refused(_) | Outcome::Unknown(_))
        }
    }

    #[test]
    fn classifies_answers() {
        let refused = classify_status(503, r#"{"code":"entity_not_assigned","message":"x"}"#);
        assert_eq!(
            refused,
            Outcome::Refused("503 entity_not_assigned".to_owned())
        );
        assert!(classify_status(429, "{}").is_retryable());
        let unknown = classify_status(503, r#"{"code":"runner_unavailable"}"#);
        assert_eq!(
            unknown,
            Outcome::Unknown("503 runner_unavailable".to_owned())
        );
        assert!(classify_status(504, "").is_retryable());
        assert!(classify_status(409, r#"{"code":"already_processing"}"#).is_retryable());
        assert!(classify_status(502, "").is_retryable());
        assert!(!classify_status(400, r#"{"code":"unknown_tag"}"#).is_retryable());
        assert!(!classify_status(404, "").is_retryable());
    }
}
