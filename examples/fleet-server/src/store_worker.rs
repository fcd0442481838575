//! The redb store's two threads: one answers reads, one writes. Writes that
//! queue up while a commit is under way go into the next transaction
//! together (group commit), so a busy fleet costs one commit per batch
//! rather than a blocking task and a commit per operation.

use std::sync::Arc;
use std::sync::mpsc;

use redb::{Database, WriteTransaction};
use tokio::sync::oneshot;

use super::store::FleetStoreError;

/// At most this many writes share one transaction.
const MAX_BATCH: usize = 512;

type ReadJob = Box<dyn FnOnce(&Database) + Send>;

/// A write waiting for its batch: `run` may be called twice (the batch, then
/// alone after another write of the batch failed), `finish` once.
trait WriteJob: Send {
    fn run(&mut self, txn: &WriteTransaction) -> Result<(), FleetStoreError>;
    fn finish(self: Box<Self>, outcome: Result<(), FleetStoreError>);
}

struct Write<T, F> {
    operation: F,
    result: Option<T>,
    reply: oneshot::Sender<Result<T, FleetStoreError>>,
}

impl<T, F> WriteJob for Write<T, F>
where
    T: Send,
    F: FnMut(&WriteTransaction) -> Result<T, FleetStoreError> + Send,
{
    fn run(&mut self, txn: &WriteTransaction) -> Result<(), FleetStoreError> {
        self.result = Some((self.operation)(txn)?);
        Ok(())
    }

    fn finish(self: Box<Self>, outcome: Result<(), FleetStoreError>) {
        let Self { result, reply, .. } = *self;
        let answer = outcome.and_then(|()| {
            result
                .ok_or_else(|| FleetStoreError::Corrupt("a write finished without running".into()))
        });
        // The caller may have stopped waiting; nothing to tell then.
        let _ = reply.send(answer);
    }
}

/// Handles to the two threads. Dropping it ends them and waits for them,
/// so the database file is closed (and can be opened again) once the
/// store is gone.
pub(crate) struct Worker {
    reads: Option<mpsc::Sender<ReadJob>>,
    writes: Option<mpsc::Sender<Box<dyn WriteJob>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queues ends both loops once the queued jobs are done.
        self.reads = None;
        self.writes = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Worker {
    pub(crate) fn start(db: Arc<Database>) -> Result<Self, FleetStoreError> {
        let (reads, read_jobs) = mpsc::channel::<ReadJob>();
        let (writes, write_jobs) = mpsc::channel::<Box<dyn WriteJob>>();
        let reader_db = Arc::clone(&db);
        let reader = std::thread::Builder::new()
            .name("fleet-store-read".into())
            .spawn(move || {
                for job in read_jobs {
                    job(&reader_db);
                }
            })?;
        let writer = std::thread::Builder::new()
            .name("fleet-store-write".into())
            .spawn(move || write_loop(&db, &write_jobs))?;
        Ok(Self {
            reads: Some(reads),
            writes: Some(writes),
            threads: vec![reader, writer],
        })
    }

    pub(crate) async fn read<T, F>(&self, operation: F) -> Result<T, FleetStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, FleetStoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: ReadJob = Box::new(move |db| {
            let _ = reply.send(operation(db));
        });
        submit(self.reads.as_ref(), job, answer).await
    }

    /// Runs `operation` in the next write transaction and answers once it
    /// is committed.
    pub(crate) async fn write<T, F>(&self, operation: F) -> Result<T, FleetStoreError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, FleetStoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Write {
            operation,
            result: None,
            reply,
        });
        submit(self.writes.as_ref(), job, answer).await
    }
}

/// Queues `job` for its thread and waits for its `answer`.
async fn submit<J, T>(
    queue: Option<&mpsc::Sender<J>>,
    job: J,
    answer: oneshot::Receiver<Result<T, FleetStoreError>>,
) -> Result<T, FleetStoreError> {
    queue
        .ok_or_else(stopped)?
        .send(job)
        .map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

fn stopped() -> FleetStoreError {
    FleetStoreError::Stopped
}

fn write_loop(db: &Database, jobs: &mpsc::Receiver<Box<dyn WriteJob>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match commit(db, &mut batch) {
            Ok(()) => {
                for job in batch.drain(..) {
                    job.finish(Ok(()));
                }
            }
            // One failing write must not fail the others: each runs alone.
            Err(_) if batch.len() > 1 => {
                for mut job in batch.drain(..) {
                    let outcome = commit(db, std::slice::from_mut(&mut job));
                    job.finish(outcome);
                }
            }
            Err(error) => {
                if let Some(job) = batch.pop() {
                    job.finish(Err(error));
                }
            }
        }
    }
}

fn commit(db: &Database, batch: &mut [Box<dyn WriteJob>]) -> Result<(), FleetStoreError> {
    let txn = db.begin_write()?;
    for job in batch.iter_mut() {
        job.run(&txn)?;
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition, backends::InMemoryBackend};

    use super::*;

    const NUMBERS: TableDefinition<'_, u32, u32> = TableDefinition::new("numbers");

    fn worker() -> Worker {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .expect("in-memory database");
        Worker::start(Arc::new(db)).expect("threads start")
    }

    fn insert(worker: &Worker, key: u32) -> impl Future<Output = Result<u32, FleetStoreError>> {
        worker.write(move |txn| {
            txn.open_table(NUMBERS)?.insert(key, key * 10)?;
            Ok(key)
        })
    }

    #[tokio::test]
    async fn a_failing_write_fails_alone_and_the_others_of_its_batch_commit() {
        let worker = worker();
        // Queued together, so the writer takes them as one batch when it can.
        let good = (0..50).map(|key| insert(&worker, key));
        let bad = worker.write(|_txn| -> Result<(), FleetStoreError> {
            Err(FleetStoreError::Corrupt("refused on purpose".into()))
        });
        let (results, bad) = tokio::join!(futures_util::future::join_all(good), bad);
        assert!(matches!(bad, Err(FleetStoreError::Corrupt(_))), "{bad:?}");
        for (key, result) in (0..50).zip(results) {
            assert_eq!(result.expect("a good write commits"), key);
        }
        let count = worker
            .read(|db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(NUMBERS)?;
                let mut count = 0;
                for entry in table.iter()? {
                    let (key, value) = entry?;
                    assert_eq!(value.value(), key.value() * 10);
                    count += 1;
                }
                Ok(count)
            })
            .await
            .expect("read");
        assert_eq!(count, 50);
    }

    #[tokio::test]
    async fn dropping_the_worker_ends_its_threads_and_releases_the_database() {
        let db = Arc::new(
            Database::builder()
                .create_with_backend(InMemoryBackend::new())
                .expect("in-memory database"),
        );
        let worker = Worker::start(Arc::clone(&db)).expect("threads start");
        assert_eq!(insert(&worker, 7).await.expect("write"), 7);
        drop(worker);
        // The drop joined both threads, so only this test holds the
        // database: a file store can be opened again at once.
        assert_eq!(Arc::strong_count(&db), 1);
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(NUMBERS).expect("table");
        assert_eq!(
            table.get(7).expect("get").map(|value| value.value()),
            Some(70)
        );
    }
}
