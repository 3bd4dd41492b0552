//! pgwarden's HTTP API.
//!
//! * `GET /v1/health` — 200 `{"status":"ok", …}` while the warden is serving.
//! * `GET /v1/nodes` — every node: status, role, WAL positions, lag, replication state,
//!   health-check statistics ([`NodeView`]).
//! * `GET /v1/cluster` — the primary and the failover generation ([`ClusterState`]).
//! * `GET /v1/events?after=N` — the event history (status changes, failover steps, fencing).
//! * `POST /v1/nodes/{id}/attach`, `/detach`, `/promote?force=true`, `/switchover` — the
//!   operations by hand (switchover: to that node).
//!   200 `{"message": …}`; refused as unsafe: 409 `{"error": …}`; unknown node: 404; a step
//!   that failed: 500.
//! * `POST /v1/nodes/{id}/recover` — starts an online recovery and answers at once (202
//!   `{"message": …}`, or 409 with the reason it may not run).
//! * `GET /v1/nodes/{id}/recovery` — what that recovery is doing: step, bytes copied of the
//!   total, rate, time left; or how it ended ([`RecoveryStatus`]); 404 if none ran.
//!
//! The server side knows nothing of the monitor or the controller: it is handed an [`Admin`].
//! The client side is what the CLI uses.

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pgwarden_core::cluster::{ClusterState, Event};
use pgwarden_core::node::NodeView;
use pgwarden_core::recovery::RecoveryStatus;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An operation by hand on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeOp {
    Attach,
    Detach,
    Promote {
        force: bool,
    },
    /// A planned switchover to this node.
    Switchover,
    /// Start an online recovery of this node (answers once it has started).
    Recover,
}

/// Why an operation was not done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// Unsafe or impossible now; nothing changed (409).
    Refused(String),
    /// No such node (404).
    NotFound(String),
    /// A step failed (500).
    Failed(String),
}

/// What the API serves.
pub trait Admin: Send + Sync + 'static {
    fn nodes(&self) -> Vec<NodeView>;
    fn cluster(&self) -> ClusterState;
    fn events(&self, after: u64) -> Vec<Event>;
    fn node_op(&self, id: u32, op: NodeOp) -> BoxFuture<'_, Result<String, AdminError>>;
    /// The running or last recovery of node `id`.
    fn recovery(&self, id: u32) -> Option<RecoveryStatus>;
}

/// Only the views, for tools that look and never act.
pub struct ViewsOnly<F>(pub F);

impl<F: Fn() -> Vec<NodeView> + Send + Sync + 'static> Admin for ViewsOnly<F> {
    fn nodes(&self) -> Vec<NodeView> {
        (self.0)()
    }
    fn cluster(&self) -> ClusterState {
        ClusterState::default()
    }
    fn events(&self, _after: u64) -> Vec<Event> {
        Vec::new()
    }
    fn node_op(&self, _id: u32, _op: NodeOp) -> BoxFuture<'_, Result<String, AdminError>> {
        Box::pin(async {
            Err(AdminError::Refused(
                "this server does not act on nodes".into(),
            ))
        })
    }
    fn recovery(&self, _id: u32) -> Option<RecoveryStatus> {
        None
    }
}

type Shared = Arc<dyn Admin>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub pid: u32,
}

/// The answer to an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    pub message: String,
}

/// The API's routes.
pub fn router(admin: Arc<dyn Admin>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/nodes", get(nodes))
        .route("/v1/cluster", get(cluster))
        .route("/v1/events", get(events))
        .route("/v1/nodes/{id}/{op}", post(node_op))
        .route("/v1/nodes/{id}/recovery", get(recovery))
        .fallback(not_found)
        .with_state(admin)
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
    })
}

async fn nodes(State(a): State<Shared>) -> Json<Vec<NodeView>> {
    Json(a.nodes())
}

async fn cluster(State(a): State<Shared>) -> Json<ClusterState> {
    Json(a.cluster())
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
}

async fn events(State(a): State<Shared>, Query(q): Query<EventsQuery>) -> Json<Vec<Event>> {
    Json(a.events(q.after))
}

#[derive(Deserialize)]
struct OpQuery {
    #[serde(default)]
    force: bool,
}

fn error(status: StatusCode, text: String) -> Response {
    (status, Json(serde_json::json!({ "error": text }))).into_response()
}

async fn node_op(
    State(a): State<Shared>,
    Path((id, op)): Path<(String, String)>,
    Query(q): Query<OpQuery>,
) -> Response {
    let Ok(id) = id.parse::<u32>() else {
        return error(
            StatusCode::NOT_FOUND,
            format!("{id:?} is not a node id; expected a number"),
        );
    };
    let op = match op.as_str() {
        "attach" => NodeOp::Attach,
        "detach" => NodeOp::Detach,
        "promote" => NodeOp::Promote { force: q.force },
        "switchover" => NodeOp::Switchover,
        "recover" => NodeOp::Recover,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no such operation: {other:?}; expected attach, detach, promote, switchover or recover"
                ),
            )
        }
    };
    match a.node_op(id, op).await {
        Ok(message) if op == NodeOp::Recover => {
            (StatusCode::ACCEPTED, Json(OpResult { message })).into_response()
        }
        Ok(message) => Json(OpResult { message }).into_response(),
        Err(AdminError::Refused(t)) => error(StatusCode::CONFLICT, t),
        Err(AdminError::NotFound(t)) => error(StatusCode::NOT_FOUND, t),
        Err(AdminError::Failed(t)) => error(StatusCode::INTERNAL_SERVER_ERROR, t),
    }
}

async fn recovery(State(a): State<Shared>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u32>() else {
        return error(
            StatusCode::NOT_FOUND,
            format!("{id:?} is not a node id; expected a number"),
        );
    };
    match a.recovery(id) {
        Some(s) => Json(s).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no recovery of node {id} has run since the warden started"),
        ),
    }
}

async fn not_found(method: Method, uri: Uri) -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({
            "error": format!("no such endpoint: {method} {uri}; see GET /v1/health, /v1/nodes, /v1/cluster, /v1/events")
        })),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the pgwarden API at {url}: {reason} (is the warden running? `pgwarden serve` or `pgwarden sandbox up` starts it)")]
    Unreachable { url: String, reason: String },
    #[error("the pgwarden API at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    /// The warden refused or failed an operation; `reason` says why.
    #[error("{reason}")]
    Refused { status: u16, reason: String },
    #[error("the pgwarden API at {url} sent an answer that cannot be read: {reason}")]
    Decode { url: String, reason: String },
}

/// A client of the API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// `base` is `http://host:port`.
    pub fn new(base: impl Into<String>, timeout: Duration) -> Result<Client, ClientError> {
        let base = base.into().trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.clone(),
                reason: e.to_string(),
            })?;
        Ok(Client { base, http })
    }

    /// Sends a request; the status and body of the answer.
    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<(reqwest::StatusCode, String), ClientError> {
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: url.to_string(),
            reason: error_chain(&e),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let body = resp.text().await.map_err(unreachable)?;
        Ok((status, body))
    }

    fn decode<T: serde::de::DeserializeOwned>(url: String, body: &str) -> Result<T, ClientError> {
        serde_json::from_str(body).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let (status, body) = self.exchange(self.http.get(&url), &url).await?;
        if !status.is_success() {
            return Err(ClientError::Status {
                url,
                status: status.as_u16(),
                body,
            });
        }
        Self::decode(url, &body)
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get("/v1/health").await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.get("/v1/nodes").await
    }

    pub async fn cluster(&self) -> Result<ClusterState, ClientError> {
        self.get("/v1/cluster").await
    }

    pub async fn events(&self, after: u64) -> Result<Vec<Event>, ClientError> {
        self.get(&format!("/v1/events?after={after}")).await
    }

    /// The running or last recovery of node `id`; `None` when none ran.
    pub async fn recovery(&self, id: u32) -> Result<Option<RecoveryStatus>, ClientError> {
        match self.get(&format!("/v1/nodes/{id}/recovery")).await {
            Ok(s) => Ok(Some(s)),
            Err(ClientError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs an operation; a refusal comes back as [`ClientError::Refused`] with the reason.
    pub async fn node_op(&self, id: u32, op: NodeOp) -> Result<OpResult, ClientError> {
        let path = match op {
            NodeOp::Attach => format!("/v1/nodes/{id}/attach"),
            NodeOp::Detach => format!("/v1/nodes/{id}/detach"),
            NodeOp::Promote { force } => format!("/v1/nodes/{id}/promote?force={force}"),
            NodeOp::Switchover => format!("/v1/nodes/{id}/switchover"),
            NodeOp::Recover => format!("/v1/nodes/{id}/recover"),
        };
        let url = format!("{}{}", self.base, path);
        // A switchover or a failover by hand may take a while.
        let req = self.http.post(&url).timeout(Duration::from_secs(600));
        let (status, body) = self.exchange(req, &url).await?;
        if status.is_success() {
            return Self::decode(url, &body);
        }
        let text = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(body);
        Err(ClientError::Refused {
            status: status.as_u16(),
            reason: text,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve<F: Fn() -> Vec<NodeView> + Send + Sync + 'static>(views: F) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin: Arc<dyn Admin> = Arc::new(ViewsOnly(views));
        tokio::spawn(async move { axum::serve(listener, router(admin)).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn client_and_server_agree() {
        let base = serve(Vec::new).await;
        let client = Client::new(&base, Duration::from_secs(5)).unwrap();
        let h = client.health().await.unwrap();
        assert_eq!(h.status, "ok");
        assert_eq!(h.pid, std::process::id());
        assert!(client.nodes().await.unwrap().is_empty());
        assert!(client.events(0).await.unwrap().is_empty());
        let e = client.node_op(1, NodeOp::Attach).await.unwrap_err();
        assert!(
            matches!(e, ClientError::Refused { status: 409, .. }),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "this server does not act on nodes");
    }

    #[tokio::test]
    async fn unknown_path_is_a_json_404() {
        let base = serve(Vec::new).await;
        let client = Client::new(&base, Duration::from_secs(5)).unwrap();
        let err = client
            .get::<serde_json::Value>("/v2/nope")
            .await
            .unwrap_err();
        match err {
            ClientError::Status { status, body, .. } => {
                assert_eq!(status, 404);
                assert!(body.contains("no such endpoint: GET /v2/nope"), "{body}");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[tokio::test]
    async fn nothing_listening_says_so() {
        // a port that was free a moment ago
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client =
            Client::new(format!("http://127.0.0.1:{port}"), Duration::from_secs(5)).unwrap();
        let err = client.nodes().await.unwrap_err().to_string();
        assert!(err.contains("cannot reach the pgwarden API"), "{err}");
        assert!(err.contains("is the warden running?"), "{err}");
    }
}
