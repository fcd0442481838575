//! A package [`Downloader`] in memory, answering from a table of URL →
//! scripted [`Reply`] and recording every request: for the package syncer's
//! tests and fuzz target.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt as _};
use opamp_client::{Download, DownloadError, Downloader};
use opamp_proto::Header;
use tokio::sync::Notify;

/// One step of a scripted response body.
#[derive(Debug, Clone)]
pub enum Step {
    /// Yields this chunk.
    Chunk(Bytes),
    /// Waits (tokio time, so paused-time tests control it).
    Sleep(Duration),
    /// Waits until the test notifies.
    Gate(Arc<Notify>),
    /// Never yields again.
    Stall,
    /// Fails the body with a transport error ("connection reset").
    Fail,
}

/// What [`FakeDownloader`] answers for one URL.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A response announcing `content_length`, whose body follows `steps`.
    Body {
        /// The announced length, if any.
        content_length: Option<u64>,
        /// The body, step by step.
        steps: Vec<Step>,
    },
    /// An HTTP status other than success.
    Status(u16),
    /// The request fails before any response ("connection refused").
    Refuse,
    /// The response never arrives.
    NeverAnswer,
}

impl Reply {
    /// `content` in three chunks, with a correct length.
    pub fn content(content: &[u8]) -> Self {
        let third = content.len().div_ceil(3).max(1);
        Reply::Body {
            content_length: Some(content.len() as u64),
            steps: content
                .chunks(third)
                .map(|chunk| Step::Chunk(Bytes::copy_from_slice(chunk)))
                .collect(),
        }
    }

    /// A body announced as `content_length` bytes that stops after `part`.
    pub fn stalling_after(part: &'static [u8], content_length: u64) -> Self {
        Reply::Body {
            content_length: Some(content_length),
            steps: vec![Step::Chunk(Bytes::from_static(part)), Step::Stall],
        }
    }
}

/// A downloader answering from a table of URL → [`Reply`] (unknown URLs get
/// 404), recording each request's URL and headers.
#[derive(Debug, Default)]
pub struct FakeDownloader {
    replies: Mutex<HashMap<String, Reply>>,
    requests: Mutex<Vec<(String, Vec<Header>)>>,
}

impl FakeDownloader {
    /// An empty table, shared.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Answers `url` with `reply` from now on.
    pub fn reply(&self, url: &str, reply: Reply) {
        self.replies.lock().unwrap().insert(url.to_owned(), reply);
    }

    /// Serves `content` at `url` ([`Reply::content`]).
    pub fn serve(&self, url: &str, content: &[u8]) {
        self.reply(url, Reply::content(content));
    }

    /// The requests so far: URL and headers, in order.
    pub fn requests(&self) -> Vec<(String, Vec<Header>)> {
        self.requests.lock().unwrap().clone()
    }

    /// The URLs requested so far, in order.
    pub fn urls(&self) -> Vec<String> {
        self.requests().into_iter().map(|(url, _)| url).collect()
    }
}

fn scripted(steps: Vec<Step>) -> BoxStream<'static, Result<Bytes, DownloadError>> {
    stream::unfold(VecDeque::from(steps), |mut steps| async move {
        loop {
            match steps.pop_front()? {
                Step::Chunk(chunk) => return Some((Ok(chunk), steps)),
                Step::Sleep(duration) => tokio::time::sleep(duration).await,
                Step::Gate(gate) => gate.notified().await,
                Step::Stall => futures_util::future::pending::<()>().await,
                Step::Fail => {
                    return Some((
                        Err(DownloadError::Transport("connection reset".into())),
                        VecDeque::new(),
                    ));
                }
            }
        }
    })
    .boxed()
}

impl Downloader for FakeDownloader {
    fn download<'a>(
        &'a self,
        url: &'a str,
        headers: &'a [Header],
    ) -> BoxFuture<'a, Result<Download, DownloadError>> {
        self.requests
            .lock()
            .unwrap()
            .push((url.to_owned(), headers.to_vec()));
        let reply = self.replies.lock().unwrap().get(url).cloned();
        Box::pin(async move {
            match reply {
                None | Some(Reply::Status(404)) => Err(DownloadError::Status(404)),
                Some(Reply::Status(status)) => Err(DownloadError::Status(status)),
                Some(Reply::Refuse) => Err(DownloadError::Transport("connection refused".into())),
                Some(Reply::NeverAnswer) => futures_util::future::pending().await,
                Some(Reply::Body {
                    content_length,
                    steps,
                }) => Ok(Download {
                    content_length,
                    body: scripted(steps),
                }),
            }
        })
    }
}
