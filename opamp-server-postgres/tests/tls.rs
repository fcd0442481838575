//! The backend over TLS: the test server is switched to TLS with a
//! certificate made here, and both the pool and the listener must use it.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;

use opamp_proto::InstanceUid;
use opamp_server::{AgentRecord, AgentStore};
use opamp_server_postgres::PgBackend;
use opamp_testkit::TestPki;
use support::{fresh_database, sql};

#[tokio::test]
async fn pool_and_listener_connect_over_tls() {
    let Some(config) = fresh_database().await else {
        return;
    };
    let admin = sql(&config).await;

    // The server reads the key as its own user: owned by it, mode 0600.
    let data_directory: String = admin
        .query_one(
            "SELECT setting FROM pg_settings WHERE name = 'data_directory'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let server_uid = match std::fs::metadata(&data_directory) {
        Ok(metadata) => metadata.uid(),
        // A server on another machine: its certificate cannot be set from here.
        Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!(
                "notice: skipping the TLS test: {data_directory} is not reachable here ({error})"
            );
            return;
        }
        Err(error) => panic!("CI=true and the test server's data directory is not here: {error}"),
    };
    let dir = format!("/tmp/opamp-pg-tls-{}", std::process::id());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pki = TestPki::generate();
    let cert_file = format!("{dir}/server.crt");
    let key_file = format!("{dir}/server.key");
    std::fs::write(&cert_file, &pki.server_cert_pem).unwrap();
    std::fs::write(&key_file, &pki.server_key_pem).unwrap();
    std::fs::set_permissions(&cert_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&key_file, Some(server_uid), None)
        .expect("give the key to the server's user (run as root or as that user)");
    for statement in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{cert_file}'"),
        format!("ALTER SYSTEM SET ssl_key_file = '{key_file}'"),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin.execute(statement.as_str(), &[]).await.unwrap();
    }

    let client_config = Arc::unwrap_or_clone(pki.rustls_client_config(false));
    let mut tls_config = config.clone();
    tls_config.ssl_mode(tokio_postgres::config::SslMode::Require);

    // The reload is asynchronous: retry until the server speaks TLS.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let backend = loop {
        match PgBackend::builder(tls_config.clone(), "tls")
            .pool_size(2)
            .tls(client_config.clone())
            .connect()
            .await
        {
            Ok(backend) => break backend,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no TLS connection: {error}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    backend.listening().await;

    let store = backend.store();
    let record = AgentRecord::new(
        InstanceUid::from_array([8; 16]),
        std::time::SystemTime::now(),
    );
    store.load(record.uid).await.unwrap();
    store.save(record.clone()).await.unwrap();
    assert_eq!(store.load(record.uid).await.unwrap(), Some(record));

    let client = backend.pool().get().await.unwrap();
    let encrypted: Vec<(String, bool)> = client
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_ssl s
             JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = current_database() AND a.pid <> $1
               AND (a.application_name = 'opamp-listener:tls' OR s.pid = pg_backend_pid())",
            &[&0_i32],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert!(
        encrypted
            .iter()
            .any(|(name, ssl)| name == "opamp-listener:tls" && *ssl),
        "{encrypted:?}"
    );
    assert!(encrypted.iter().all(|(_, ssl)| *ssl), "{encrypted:?}");

    // Leave the shared test server as it was.
    for statement in [
        "ALTER SYSTEM RESET ssl",
        "ALTER SYSTEM RESET ssl_cert_file",
        "ALTER SYSTEM RESET ssl_key_file",
        "SELECT pg_reload_conf()",
    ] {
        admin.execute(statement, &[]).await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
