//! Where everything of a sandbox lives: ports (pgpool_setup's habit) and paths.

use std::path::{Path, PathBuf};

pub const DEFAULT_NODES: u16 = 3;
pub const DEFAULT_BASE_PORT: u16 = 11000;
/// The HTTP API sits this far above the base port.
pub const API_OFFSET: u16 = 100;

/// A sandbox's ports and paths; a pure function of its directory, node count and base port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
    pub nodes: u16,
    pub base_port: u16,
}

impl Layout {
    /// Checks the node count and base port fit: nodes at BASE+2 … BASE+1+N, API at BASE+100.
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
        if base_port < 1024 || u32::from(base_port) + u32::from(API_OFFSET) > 65535 {
            return Err(format!(
                "--port {base_port} does not fit: expected 1024 … {} so that BASE+{API_OFFSET} is a valid port",
                65535 - API_OFFSET
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
        assert_eq!(ports, [11000, 11001, 11002, 11003, 11004, 11100]);
        assert_eq!(l.data_dir(2), Path::new("/s/data2"));
        assert_eq!(l.node_log(1), Path::new("/s/log/node1.log"));
    }

    #[test]
    fn bounds() {
        let d = Path::new("/s");
        assert!(Layout::new(d, 0, 11000).is_err());
        assert!(Layout::new(d, 98, 11000).is_ok());
        assert!(Layout::new(d, 99, 11000).is_err());
        assert!(Layout::new(d, 1, 65435).is_ok());
        assert!(Layout::new(d, 1, 65436).is_err());
        assert!(Layout::new(d, 1, 80).is_err());
    }
}
