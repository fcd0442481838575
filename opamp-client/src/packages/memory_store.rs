//! A package store that keeps everything in memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::store::{InstalledPackage, PackageInfo, PackageStore, PackageStoreError, PackageWriter};

#[derive(Default)]
struct MemoryState {
    all_packages_hash: Bytes,
    packages: BTreeMap<String, (PackageInfo, Bytes)>,
}

/// A [`PackageStore`] in memory: nothing survives the process, and each file is
/// held whole (the syncer's size limit bounds it). For tests and for agents
/// that hand the content on themselves; [`InstalledPackage::path`] is `None`.
#[derive(Clone, Default)]
pub struct MemoryPackageStore {
    state: Arc<Mutex<MemoryState>>,
}

impl std::fmt::Debug for MemoryPackageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryPackageStore")
            .field("packages", &state.packages.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl MemoryPackageStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The content of an installed package.
    pub fn content(&self, name: &str) -> Option<Bytes> {
        self.lock()
            .packages
            .get(name)
            .map(|(_, content)| content.clone())
    }

    /// Installs a package directly, bypassing the syncer (for seeding a store
    /// with packages that were installed before).
    pub fn insert(&self, info: PackageInfo, content: Bytes) {
        self.lock()
            .packages
            .insert(info.name.clone(), (info, content));
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // A panic while holding this lock cannot leave the maps half-updated
        // (every update is a single insert or remove), so poison is ignored.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn installed(info: &PackageInfo) -> InstalledPackage {
    InstalledPackage {
        info: info.clone(),
        path: None,
    }
}

impl PackageStore for MemoryPackageStore {
    fn installed(&self) -> BoxFuture<'_, Result<Vec<InstalledPackage>, PackageStoreError>> {
        let list = self
            .lock()
            .packages
            .values()
            .map(|(info, _)| installed(info))
            .collect();
        Box::pin(async move { Ok(list) })
    }

    fn all_packages_hash(&self) -> BoxFuture<'_, Result<Bytes, PackageStoreError>> {
        let hash = self.lock().all_packages_hash.clone();
        Box::pin(async move { Ok(hash) })
    }

    fn set_all_packages_hash(&self, hash: Bytes) -> BoxFuture<'_, Result<(), PackageStoreError>> {
        self.lock().all_packages_hash = hash;
        Box::pin(async { Ok(()) })
    }

    fn begin_install<'a>(
        &'a self,
        package: &'a PackageInfo,
    ) -> BoxFuture<'a, Result<Box<dyn PackageWriter>, PackageStoreError>> {
        let writer = MemoryWriter {
            store: self.clone(),
            info: package.clone(),
            content: Vec::new(),
        };
        Box::pin(async move { Ok(Box::new(writer) as Box<dyn PackageWriter>) })
    }

    fn update_info<'a>(
        &'a self,
        package: &'a PackageInfo,
    ) -> BoxFuture<'a, Result<InstalledPackage, PackageStoreError>> {
        let result = {
            let mut state = self.lock();
            match state.packages.get_mut(&package.name) {
                Some((info, _)) if info.content_hash == package.content_hash => {
                    *info = package.clone();
                    Ok(installed(info))
                }
                _ => Err(PackageStoreError::NotInstalled(package.name.clone())),
            }
        };
        Box::pin(async move { result })
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), PackageStoreError>> {
        self.lock().packages.remove(name);
        Box::pin(async { Ok(()) })
    }
}

struct MemoryWriter {
    store: MemoryPackageStore,
    info: PackageInfo,
    content: Vec<u8>,
}

impl PackageWriter for MemoryWriter {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), PackageStoreError>> {
        self.content.extend_from_slice(chunk);
        Box::pin(async { Ok(()) })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<InstalledPackage, PackageStoreError>> {
        let this = *self;
        let result = installed(&this.info);
        this.store.insert(this.info, Bytes::from(this.content));
        Box::pin(async move { Ok(result) })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<(), PackageStoreError>> {
        Box::pin(async { Ok(()) })
    }
}
