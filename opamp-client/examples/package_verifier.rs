//! A custom `PackageVerifier`: only packages carrying a valid signature are
//! installed.
//!
//! ```sh
//! cargo run -p opamp-client --example package_verifier
//! ```
//!
//! The "signature" here is a keyed SHA-256 over the file's digest, to keep
//! the example free of crypto dependencies; a real verifier checks an
//! ed25519 or GPG signature the same way. The example runs the package
//! syncer on its own, with files served from memory, so nothing touches the
//! network. In an agent, plug the verifier into the client instead:
//! `OpampClient::builder(url).package_store(store).package_verifier(Arc::new(KeyedVerifier { .. }))`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _, stream};
use opamp_client::proto::{
    DownloadableFile, Header, PackageAvailable, PackageStatusEnum, PackageType, PackagesAvailable,
};
use opamp_client::{
    Download, DownloadError, Downloader, MemoryPackageStore, PackageEvent, PackageSyncer,
    PackageToVerify, PackageVerifier, SignatureCheck, VerifyError,
};
use sha2::{Digest as _, Sha256};

/// Accepts a package only if its signature is SHA-256(key ‖ file digest).
struct KeyedVerifier {
    key: Vec<u8>,
}

/// One check in progress: remembers the signature the package came with.
struct KeyedCheck {
    key: Vec<u8>,
    signature: Bytes,
}

fn sign(key: &[u8], digest: &[u8]) -> Bytes {
    Bytes::copy_from_slice(
        &Sha256::new()
            .chain_update(key)
            .chain_update(digest)
            .finalize(),
    )
}

impl PackageVerifier for KeyedVerifier {
    fn begin(&self, package: &PackageToVerify<'_>) -> Result<Box<dyn SignatureCheck>, VerifyError> {
        // Refused before a single byte is downloaded.
        if package.signature.is_empty() {
            return Err(VerifyError::Unsigned);
        }
        Ok(Box::new(KeyedCheck {
            key: self.key.clone(),
            signature: package.signature.clone(),
        }))
    }
}

impl SignatureCheck for KeyedCheck {
    // `update` (every chunk) is not needed: the signature covers the digest,
    // which the syncer has already checked against `content_hash`.
    fn finish(self: Box<Self>, sha256: &[u8; 32]) -> Result<(), VerifyError> {
        if sign(&self.key, sha256) == self.signature {
            Ok(())
        } else {
            Err(VerifyError::Rejected(
                "signature does not match the key".into(),
            ))
        }
    }
}

/// Serves files from memory instead of HTTP.
struct MemoryFiles(HashMap<String, Bytes>);

impl Downloader for MemoryFiles {
    fn download<'a>(
        &'a self,
        url: &'a str,
        _headers: &'a [Header],
    ) -> BoxFuture<'a, Result<Download, DownloadError>> {
        let file = self.0.get(url).cloned().ok_or(DownloadError::Status(404));
        async move {
            let file = file?;
            Ok(Download {
                content_length: Some(file.len() as u64),
                body: stream::once(async move { Ok(file) }).boxed(),
            })
        }
        .boxed()
    }
}

/// An offered package: its file's SHA-256 and a package hash over version and content.
fn package(url: &str, content: &[u8], signature: Bytes) -> PackageAvailable {
    let content_hash = Sha256::digest(content);
    PackageAvailable {
        r#type: PackageType::Addon as i32,
        version: "1.0.0".into(),
        file: Some(DownloadableFile {
            download_url: url.into(),
            content_hash: Bytes::copy_from_slice(&content_hash),
            signature,
            headers: None,
        }),
        hash: Bytes::copy_from_slice(
            &Sha256::new()
                .chain_update("1.0.0")
                .chain_update(content_hash)
                .finalize(),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = b"shared signing key".to_vec();
    let good = Bytes::from_static(b"#!/bin/sh\necho good plugin\n");
    let evil = Bytes::from_static(b"#!/bin/sh\necho tampered plugin\n");
    let files = MemoryFiles(HashMap::from([
        ("mem://good".to_owned(), good.clone()),
        ("mem://tampered".to_owned(), evil.clone()),
        ("mem://unsigned".to_owned(), good.clone()),
    ]));

    let store = Arc::new(MemoryPackageStore::new());
    let syncer = PackageSyncer::builder(store.clone(), Arc::new(files))
        .verifier(Arc::new(KeyedVerifier { key: key.clone() }))
        .on_event(|event| match event {
            PackageEvent::Installed(package) => println!("installed {:?}", package.info.name),
            PackageEvent::Failed { name, error } => println!("refused {name:?}: {error}"),
            PackageEvent::Removed { name } => println!("removed {name:?}"),
            _ => {}
        })
        .start()
        .await?;

    // The tampered file carries the signature of the good one.
    let good_signature = sign(&key, &Sha256::digest(&good));
    let packages = [
        ("good", package("mem://good", &good, good_signature.clone())),
        ("tampered", package("mem://tampered", &evil, good_signature)),
        ("unsigned", package("mem://unsigned", &good, Bytes::new())),
    ];
    let mut all = Sha256::new();
    for (name, package) in &packages {
        all.update(name);
        all.update(&package.hash);
    }
    syncer.offer(PackagesAvailable {
        packages: packages
            .into_iter()
            .map(|(name, p)| (name.to_owned(), p))
            .collect(),
        all_packages_hash: Bytes::copy_from_slice(&all.finalize()),
    });
    syncer.wait_idle().await;

    // What the agent would report to the server.
    for (name, status) in syncer.statuses().packages {
        let state =
            PackageStatusEnum::try_from(status.status).map_or("unknown", |s| s.as_str_name());
        println!("status {name:?}: {state} {}", status.error_message);
    }
    let held = |name| store.content(name).is_some();
    println!(
        "the store holds good: {}, tampered: {}, unsigned: {}",
        held("good"),
        held("tampered"),
        held("unsigned")
    );
    Ok(())
}
