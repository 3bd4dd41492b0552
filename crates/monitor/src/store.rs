//! The state file: pgwarden's [`ClusterState`], written atomically (a temporary file beside it,
//! fsync, rename, fsync of the directory) so that a crash leaves either the old state or the
//! new one, never half of either.

use pgwarden_core::cluster::ClusterState;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read the state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {path} is not valid ({problem}); it was not written by this pgwarden, or was damaged. Move it away to start without saved state (every node is then checked afresh)")]
    Parse { path: PathBuf, problem: String },
    #[error("cannot write the state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads the saved state; `None` when there is no file yet.
pub fn load(path: &Path) -> Result<Option<ClusterState>, StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StoreError::Parse {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })
}

/// Writes the state: temporary file, fsync, rename over the old one, fsync of the directory.
pub fn save(path: &Path, state: &ClusterState) -> Result<(), StoreError> {
    let err = |source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&text).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Makes the rename itself durable.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_core::cluster::NodeRecord;
    use pgwarden_core::node::NodeStatus;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgwarden.state");
        assert!(load(&path).unwrap().is_none());
        let mut st = ClusterState {
            generation: 3,
            primary: Some(2),
            ..Default::default()
        };
        st.nodes.insert(
            0,
            NodeRecord {
                status: NodeStatus::Down,
                since: chrono::Utc::now(),
                reason: "failed".into(),
            },
        );
        save(&path, &st).unwrap();
        assert_eq!(load(&path).unwrap(), Some(st.clone()));
        st.generation = 4;
        save(&path, &st).unwrap();
        assert_eq!(load(&path).unwrap().unwrap().generation, 4);
        assert!(!dir.path().join("pgwarden.state.tmp").exists());
        std::fs::write(&path, "{ half").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("pgwarden.state is not valid"), "{e}");
        let e = save(&dir.path().join("no/such/dir/state"), &st)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot write the state file"), "{e}");
    }
}
