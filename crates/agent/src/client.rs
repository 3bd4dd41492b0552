//! The warden's side: a typed, signing client of one agent.

use crate::api::{
    AgentStatus, Done, ErrorBody, JobSpec, JobStatus, StandbyRequest, StartRequest, StopRequest,
};
use std::time::Duration;

/// Why a request to an agent did not succeed. Every message names the agent's address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// No answer: connection refused, timed out, reset.
    #[error("{0}")]
    Unreachable(String),
    /// 401: the agent refused the signature (another secret, a clock too far off).
    #[error("{0}")]
    Auth(String),
    /// 400, 404, 409: the request is wrong, or not possible in the agent's state (the server
    /// runs, a job runs); nothing was done.
    #[error("{0}")]
    Refused(String),
    /// 500: a tool (pg_ctl, …) failed; the message carries its output.
    #[error("{0}")]
    Failed(String),
    /// Anything else: an answer that cannot be read, an unexpected status.
    #[error("{0}")]
    Protocol(String),
}

/// A client of one agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    addr: String,
    secret: Vec<u8>,
    timeout: Duration,
    /// `Err` if the HTTP client could not be built (reported on first use; no panics).
    http: Result<reqwest::Client, String>,
}

/// What is added to a stop or start request's own timeout for the HTTP request.
const PG_CTL_MARGIN: Duration = Duration::from_secs(15);

impl AgentClient {
    /// `addr` is the agent's `HOST:PORT` (`[::1]:9901` for IPv6); `timeout` bounds each
    /// request, except stop and start, which wait for pg_ctl as long as they ask.
    pub fn new(addr: &str, secret: Vec<u8>, timeout: Duration) -> AgentClient {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| e.to_string());
        AgentClient {
            addr: addr.to_string(),
            secret,
            timeout,
            http,
        }
    }

    /// The agent's address, as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub async fn status(&self) -> Result<AgentStatus, AgentError> {
        self.call("GET", "/v1/status", None, self.timeout).await
    }

    /// Stops the server (waits up to the request's timeout for it to go).
    pub async fn stop(&self, req: StopRequest) -> Result<Done, AgentError> {
        let t = self.pg_ctl_timeout(req.timeout_secs);
        self.call("POST", "/v1/stop", Some(body(&req)?), t).await
    }

    /// Starts the server (waits up to the request's timeout until it accepts connections).
    pub async fn start(&self, req: StartRequest) -> Result<Done, AgentError> {
        let t = self.pg_ctl_timeout(req.timeout_secs);
        self.call("POST", "/v1/start", Some(body(&req)?), t).await
    }

    pub async fn standby(&self, req: StandbyRequest) -> Result<Done, AgentError> {
        self.call("POST", "/v1/standby", Some(body(&req)?), self.timeout)
            .await
    }

    /// Starts a job; its status as it starts (poll [`AgentClient::job`] for progress).
    pub async fn start_job(&self, spec: JobSpec) -> Result<JobStatus, AgentError> {
        self.call("POST", "/v1/jobs", Some(body(&spec)?), self.timeout)
            .await
    }

    pub async fn job(&self, id: u64) -> Result<JobStatus, AgentError> {
        self.call("GET", &format!("/v1/jobs/{id}"), None, self.timeout)
            .await
    }

    /// Cancels a job and waits for its clean-up; its final status.
    pub async fn cancel(&self, id: u64) -> Result<JobStatus, AgentError> {
        // The agent waits up to 60 s for the job's clean-up.
        let t = self.timeout.max(Duration::from_secs(75));
        self.call("DELETE", &format!("/v1/jobs/{id}"), None, t)
            .await
    }

    fn pg_ctl_timeout(&self, secs: u64) -> Duration {
        self.timeout
            .max(Duration::from_secs(secs).saturating_add(PG_CTL_MARGIN))
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T, AgentError> {
        let addr = &self.addr;
        let http = self.http.as_ref().map_err(|e| {
            AgentError::Protocol(format!(
                "cannot make an HTTP client for the agent at {addr}: {e}"
            ))
        })?;
        let url = format!("http://{addr}{path}");
        let body = body.unwrap_or_default();
        let auth =
            crate::auth::authorization(&self.secret, crate::auth::now_secs(), method, path, &body);
        let method_v = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| AgentError::Protocol(format!("{method}: {e}")))?;
        let mut req = http
            .request(method_v, &url)
            .timeout(timeout)
            .header(reqwest::header::AUTHORIZATION, auth);
        if !body.is_empty() {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let unreachable = |e: reqwest::Error| {
            let why = if e.is_timeout() {
                format!("no answer within {} s", timeout.as_secs_f64())
            } else {
                error_chain(&e)
            };
            AgentError::Unreachable(format!(
                "cannot reach the agent at {addr} ({method} {path}): {why} (is `pgwarden agent` running there?)"
            ))
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let text = resp.text().await.map_err(unreachable)?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| {
                AgentError::Protocol(format!(
                    "the agent at {addr} sent an answer to {method} {path} that cannot be read: {e}"
                ))
            });
        }
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| text.chars().take(500).collect());
        let m = format!("the agent at {addr} ({method} {path}): {message}");
        Err(match status.as_u16() {
            401 => AgentError::Auth(m),
            400 | 404 | 409 => AgentError::Refused(m),
            500 => AgentError::Failed(m),
            s => AgentError::Protocol(format!(
                "the agent at {addr} answered {method} {path} with status {s}: {message}"
            )),
        })
    }
}

fn body<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, AgentError> {
    serde_json::to_vec(v).map_err(|e| AgentError::Protocol(format!("cannot encode a request: {e}")))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
