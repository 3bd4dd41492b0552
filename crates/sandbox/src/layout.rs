//! Where everything of a sandbox lives: ports (pgpool_setup's habit) and paths.

use std::path::{Path, PathBuf};

pub const DEFAULT_NODES: u16 = 3;
pub const DEFAULT_BASE_PORT: u16 = 11000;
/// The HTTP API sits this far above the base port.
pub const API_OFFSET: u16 = 100;
/// Node N's agent listens at BASE + AGENT_OFFSET + N: above the API, below BASE+200 (where
/// the next sandbox's range starts when tests space them by 200).
pub const AGENT_OFFSET: u16 = API_OFFSET + 1;

/// A sandbox's ports and paths; a pure function of its directory, node count and base port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
    pub nodes: u16,
    pub base_port: u16,
}

impl Layout {
    /// Checks the node count and base port fit: nodes at BASE+2 … BASE+1+N, API at BASE+100,
    /// agents at BASE+101 … BASE+100+N.
    pub fn new(dir: &Path, nodes: u16, base_port: u16) -> Result<Layout, String> {
        if nodes == 0 {
            return Err("--nodes must be at least 1 (one primary)".into());
        }
        if nodes > API_OFFSET - 2 {
            return Err(format!(
                "--nodes {nodes} is too many: node ports BASE+2 … BASE+1+N must stay below the API port BASE+{API_OFFSET}; at most {}",
                API_OFFSET - 2
            ));
        }
        let highest = u32::from(AGENT_OFFSET) + u32::from(nodes) - 1;
        if base_port < 1024 || u32::from(base_port) + highest > 65535 {
            return Err(format!(
                "--port {base_port} does not fit: expected 1024 … {} so that the last agent's port BASE+{highest} is a valid port",
                65535 - highest
            ));
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
            nodes,
            base_port,
        })
    }

    pub fn proxy_port(&self) -> u16 {
        self.base_port
    }
    pub fn pcp_port(&self) -> u16 {
        self.base_port + 1
    }
    pub fn node_port(&self, id: u16) -> u16 {
        self.base_port + 2 + id
    }
    pub fn api_port(&self) -> u16 {
        self.base_port + API_OFFSET
    }
    /// Node `id`'s agent (`pgwarden agent`).
    pub fn agent_port(&self, id: u16) -> u16 {
        self.base_port + AGENT_OFFSET + id
    }
    pub fn node_ids(&self) -> impl Iterator<Item = u16> {
        0..self.nodes
    }
    pub fn data_dir(&self, id: u16) -> PathBuf {
        self.dir.join(format!("data{id}"))
    }
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }
    pub fn node_log(&self, id: u16) -> PathBuf {
        self.log_dir().join(format!("node{id}.log"))
    }
    pub fn warden_log(&self) -> PathBuf {
        self.log_dir().join("warden.log")
    }
    pub fn warden_pid(&self) -> PathBuf {
        self.dir.join("warden.pid")
    }
    /// The secret the warden and the agents share (mode 0600, the database user's).
    pub fn agent_secret(&self) -> PathBuf {
        self.dir.join("agent.secret")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    pub fn agent_pid(&self, id: u16) -> PathBuf {
        self.run_dir().join(format!("agent{id}.pid"))
    }
    pub fn agent_log(&self, id: u16) -> PathBuf {
        self.log_dir().join(format!("agent{id}.log"))
    }
    /// Where the pgwarden executable is copied when the database user cannot run it where
    /// it is (a build under /root, say).
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("pgwarden.toml")
    }
    pub fn pgpass(&self) -> PathBuf {
        self.dir.join("pgpass")
    }
    pub fn pcp_conf(&self) -> PathBuf {
        self.dir.join("pcp.conf")
    }
    pub fn pcppass(&self) -> PathBuf {
        self.dir.join("pcppass")
    }
    pub fn meta(&self) -> PathBuf {
        meta_path(&self.dir)
    }
    pub fn slot_name(id: u16) -> String {
        format!("node{id}")
    }
    /// Every port the sandbox uses, with what it is for.
    pub fn ports(&self) -> Vec<(u16, String)> {
        let mut v = vec![
            (self.proxy_port(), "the proxy".to_string()),
            (self.pcp_port(), "PCP (reserved)".to_string()),
        ];
        v.extend(
            self.node_ids()
                .map(|i| (self.node_port(i), format!("PostgreSQL node {i}"))),
        );
        v.push((self.api_port(), "the HTTP API".to_string()));
        v.extend(
            self.node_ids()
                .map(|i| (self.agent_port(i), format!("the agent of node {i}"))),
        );
        v
    }
}

pub fn meta_path(dir: &Path) -> PathBuf {
    dir.join("sandbox.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpool_setup_port_habit() {
        let l = Layout::new(Path::new("/s"), 3, 11000).unwrap();
        let ports: Vec<u16> = l.ports().iter().map(|p| p.0).collect();
        assert_eq!(
            ports,
            [11000, 11001, 11002, 11003, 11004, 11100, 11101, 11102, 11103]
        );
        assert_eq!(l.data_dir(2), Path::new("/s/data2"));
        assert_eq!(l.node_log(1), Path::new("/s/log/node1.log"));
        assert_eq!(l.agent_port(2), 11103);
        assert_eq!(l.agent_pid(1), Path::new("/s/run/agent1.pid"));
        assert_eq!(l.agent_log(0), Path::new("/s/log/agent0.log"));
        assert_eq!(l.agent_secret(), Path::new("/s/agent.secret"));
    }

    #[test]
    fn bounds() {
        let d = Path::new("/s");
        assert!(Layout::new(d, 0, 11000).is_err());
        assert!(Layout::new(d, 98, 11000).is_ok());
        assert!(Layout::new(d, 99, 11000).is_err());
        // The last agent's port, BASE+100+N, must exist.
        assert!(Layout::new(d, 1, 65434).is_ok());
        assert!(Layout::new(d, 1, 65435).is_err());
        assert!(Layout::new(d, 3, 65432).is_ok());
        assert!(Layout::new(d, 3, 65433).is_err());
        let l = Layout::new(d, 98, 11000).unwrap();
        assert_eq!(l.agent_port(97), 11198, "below the next range at BASE+200");
        let e = Layout::new(d, 3, 65500).unwrap_err();
        assert!(e.contains("expected 1024 … 65432"), "{e}");
        assert!(Layout::new(d, 1, 80).is_err());
    }
}
