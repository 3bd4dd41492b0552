//! STUB (replaced by the real client on merge).
use crate::api::*;
use std::time::Duration;
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Protocol(String),
}
#[derive(Clone, Debug)]
pub struct AgentClient {
    addr: String,
}
impl AgentClient {
    pub fn new(addr: &str, _secret: Vec<u8>, _t: Duration) -> AgentClient {
        AgentClient { addr: addr.into() }
    }
    pub fn addr(&self) -> &str {
        &self.addr
    }
    pub async fn status(&self) -> Result<AgentStatus, AgentError> {
        Err(AgentError::Unreachable("stub".into()))
    }
    pub async fn stop(&self, _r: StopRequest) -> Result<Done, AgentError> {
        Err(AgentError::Unreachable("stub".into()))
    }
    pub async fn start(&self, _r: StartRequest) -> Result<Done, AgentError> {
        Err(AgentError::Unreachable("stub".into()))
    }
    pub async fn standby(&self, _r: StandbyRequest) -> Result<Done, AgentError> {
        Err(AgentError::Unreachable("stub".into()))
    }
    pub async fn start_job(&self, _r: JobSpec) -> Result<JobStatus, AgentError> {
        Err(AgentError::Unreachable("stub".into()))
    }
    pub async fn job(&self, _id: u64) -> Result<JobStatus, AgentError> {
        Err(AgentError::Unreachable("stub".into()))
    }
}
