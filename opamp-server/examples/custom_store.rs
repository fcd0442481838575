//! A custom `AgentStore`: agent records kept as files in a directory, one
//! per agent, so the server remembers its fleet across restarts.
//!
//! ```sh
//! cargo run -p opamp-server --example custom_store -- ./opamp-records   # 127.0.0.1:4320
//! cargo run -p opamp-client --example minimal_agent                     # in another terminal
//! ```
//!
//! Stop the server with Ctrl-C and start it again: it lists the agents it
//! saw before. `AgentRecord::encode`/`decode` give the byte form; any
//! key-value store (a database table, an object store) works the same way.

use std::io::ErrorKind;
use std::path::PathBuf;

use opamp_proto::InstanceUid;
use opamp_server::{AgentRecord, AgentStore, BoxFuture, OpampServer, Registry, StoreError};

/// Records as `<uid>.record` files in one directory.
struct DirectoryStore {
    dir: PathBuf,
}

impl DirectoryStore {
    fn path(&self, uid: InstanceUid) -> PathBuf {
        self.dir.join(format!("{uid}.record"))
    }
}

impl AgentStore for DirectoryStore {
    fn load(&self, uid: InstanceUid) -> BoxFuture<'_, Result<Option<AgentRecord>, StoreError>> {
        Box::pin(async move {
            match tokio::fs::read(self.path(uid)).await {
                Ok(bytes) => AgentRecord::decode(&bytes).map(Some),
                Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
                Err(error) => Err(StoreError::backend(error)),
            }
        })
    }

    fn save(&self, record: AgentRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // Write aside, then rename: a crash never leaves half a record.
            let path = self.path(record.uid);
            let temporary = path.with_extension("tmp");
            tokio::fs::write(&temporary, record.encode())
                .await
                .map_err(StoreError::backend)?;
            tokio::fs::rename(&temporary, &path)
                .await
                .map_err(StoreError::backend)
        })
    }

    fn remove(&self, uid: InstanceUid) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.path(uid)).await {
                Err(error) if error.kind() != ErrorKind::NotFound => {
                    Err(StoreError::backend(error))
                }
                _ => Ok(()),
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, StoreError>> {
        Box::pin(async move {
            let mut records = Vec::new();
            let mut entries = tokio::fs::read_dir(&self.dir)
                .await
                .map_err(StoreError::backend)?;
            while let Some(entry) = entries.next_entry().await.map_err(StoreError::backend)? {
                if entry.path().extension().is_some_and(|e| e == "record") {
                    let bytes = tokio::fs::read(entry.path())
                        .await
                        .map_err(StoreError::backend)?;
                    records.push(AgentRecord::decode(&bytes)?);
                }
            }
            Ok(records)
        })
    }

    // `contains` runs at every heartbeat; a metadata call is cheaper than a read.
    fn contains(&self, uid: InstanceUid) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            tokio::fs::try_exists(self.path(uid))
                .await
                .map_err(StoreError::backend)
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "opamp-records".to_owned()),
    );
    tokio::fs::create_dir_all(&dir).await?;
    let registry = Registry::builder()
        .store(DirectoryStore { dir: dir.clone() })
        .build();
    for record in registry.agents().await? {
        let seen = record.last_seen.elapsed().unwrap_or_default().as_secs();
        println!("known from before: {} (last seen {seen} s ago)", record.uid);
    }

    let server = OpampServer::builder().registry(registry.clone()).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:4320").await?;
    println!(
        "records in {}; OpAMP on 127.0.0.1:4320/v1/opamp; Ctrl-C to stop",
        dir.display()
    );
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    server.serve_with_shutdown(listener, ctrl_c).await?;
    let saved = registry.agents().await?.len();
    println!("stopped; {saved} agent record(s) saved");
    Ok(())
}
