//! Calls to a runner's gateway, classified by what they tell about the call's effect.

use std::io::ErrorKind;
use std::time::Duration;

/// What one HTTP call to `POST /v1/entities/...` came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 200 with this body.
    Ok(String),
    /// Refused before the entity could act (no owner yet, shutting down, mailbox full,
    /// connection refused): safe to send again.
    Refused(String),
    /// The call may or may not have taken effect (connection lost after sending, owner
    /// unreachable mid-call, interrupted, deadline).
    Unknown(String),
    /// Any other answer (a bug, for the counter): status and error code.
    Failed(String),
}

/// A blocking HTTP client for one worker thread (keeps its connections).
pub(crate) struct Client {
    agent: ureq::Agent,
}

impl Client {
    pub(crate) fn new(timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(Duration::from_secs(2)))
            .build()
            .into();
        Self { agent }
    }

    /// `POST {gateway}/v1/entities/counter/{id}/{tag}` with `body`, giving the runtime
    /// `deadline_ms` (`x-shoal-timeout-ms`).
    pub(crate) fn call(
        &self,
        gateway: &str,
        id: &str,
        tag: &str,
        body: &str,
        deadline_ms: u64,
    ) -> Outcome {
        let url = format!("{gateway}/v1/entities/counter/{id}/{tag}");
        let response = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .header("x-shoal-timeout-ms", &deadline_ms.to_string())
            .send(body);
        let mut response = match response {
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
        let code = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let label = format!("{status} {code}");
        match (status, code.as_str()) {
            (503, "entity_not_assigned" | "shutting_down") | (429, _) => Outcome::Refused(label),
            (503, _) | (504, _) => Outcome::Unknown(label),
            _ => Outcome::Failed(format!("{label}: {text}")),
        }
    }
}

fn classify_error(error: &ureq::Error) -> Outcome {
    match error {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            Outcome::Refused(format!("connection failed: {error}"))
        }
        ureq::Error::Io(e) if e.kind() == ErrorKind::ConnectionRefused => {
            Outcome::Refused(format!("connection refused: {e}"))
        }
        ureq::Error::Timeout(ureq::Timeout::Connect) => {
            Outcome::Refused(format!("connect timed out: {error}"))
        }
        other => Outcome::Unknown(format!("connection lost: {other}")),
    }
}
