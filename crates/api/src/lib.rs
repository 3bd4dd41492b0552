//! pgwarden's HTTP API.
//!
//! * `GET /v1/health` — 200 `{"status":"ok", …}` while the warden is serving.
//! * `GET /v1/nodes` — every node: status, role, WAL positions, lag, replication state,
//!   health-check statistics ([`NodeView`]).
//!
//! The server side knows nothing of the monitor: it is handed a function returning the views.
//! The client side is what the CLI uses.

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use pgwarden_core::node::NodeView;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

pub type ViewFn = Arc<dyn Fn() -> Vec<NodeView> + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub pid: u32,
}

/// The API's routes.
pub fn router(views: ViewFn) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/nodes", get(nodes))
        .fallback(not_found)
        .with_state(views)
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
    })
}

async fn nodes(State(views): State<ViewFn>) -> Json<Vec<NodeView>> {
    Json(views())
}

async fn not_found(method: Method, uri: Uri) -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({
            "error": format!("no such endpoint: {method} {uri}; see GET /v1/health and GET /v1/nodes")
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

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: error_chain(&e),
            })?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        if !status.is_success() {
            return Err(ClientError::Status {
                url,
                status: status.as_u16(),
                body,
            });
        }
        serde_json::from_str(&body).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get("/v1/health").await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.get("/v1/nodes").await
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

    async fn serve(views: ViewFn) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(views)).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn client_and_server_agree() {
        let base = serve(Arc::new(Vec::new)).await;
        let client = Client::new(&base, Duration::from_secs(5)).unwrap();
        let h = client.health().await.unwrap();
        assert_eq!(h.status, "ok");
        assert_eq!(h.pid, std::process::id());
        assert!(client.nodes().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn unknown_path_is_a_json_404() {
        let base = serve(Arc::new(Vec::new)).await;
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
