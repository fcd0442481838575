//! A framed OpAMP WebSocket connection, shared by the client and server
//! roles: it sends `Tx` messages and receives `Rx` messages, each one binary
//! WebSocket message in the OpAMP framing of [`crate::encode_frame`].

// Without a role feature nothing constructs a connection.
#![cfg_attr(not(any(feature = "client", feature = "server")), allow(dead_code))]

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::frame::{FrameError, HeaderlessFrames, decode_frame, encode_frame};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// tungstenite's read buffer per connection. Small on purpose: a server may
/// hold many idle agent connections, and tungstenite allocates (and zeroes)
/// this eagerly and keeps it for the connection's life. The socket itself is
/// read in larger blocks by [`OnDemandRead`], so a large message does not
/// take one system call per 512 bytes.
const READ_BUFFER_SIZE: usize = 512;

/// How much [`OnDemandRead`] reads from the socket at once (on the stack).
const SOCKET_READ_SIZE: usize = 8 * 1024;

/// Default bound for the closing handshake (opamp-go uses 5 s as well).
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Close code 1000, normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code 1001, going away (e.g. server shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code 1002, protocol error.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code 1003, unsupported data (e.g. a text frame).
pub const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
/// Close code 1009, message too big (WS-09, WS-10).
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

/// Longest close reason allowed in a control frame (125 - 2 code bytes).
const MAX_CLOSE_REASON: usize = 123;

/// Anything a WebSocket can run on; erased so client and server connections
/// share one concrete type.
pub(crate) trait WsIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> WsIo for T {}

pub(crate) type BoxedIo = Box<dyn WsIo>;
type Ws = WebSocketStream<BoxedIo>;

/// Reads the socket through a stack buffer of [`SOCKET_READ_SIZE`] and keeps
/// on the heap only what the reader above did not take yet. An idle
/// connection holds no read-ahead buffer at all; while a message arrives,
/// the leftover of one socket read lives until tungstenite has consumed it.
pub(crate) struct OnDemandRead<T> {
    io: T,
    /// Bytes read from the socket and not yet handed out; `None` when idle.
    leftover: Option<bytes::Bytes>,
}

impl<T> OnDemandRead<T> {
    pub(crate) fn new(io: T) -> Self {
        Self { io, leftover: None }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for OnDemandRead<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Some(leftover) = this.leftover.as_mut() {
            let take = leftover.len().min(buf.remaining());
            buf.put_slice(&leftover.split_to(take));
            if leftover.is_empty() {
                this.leftover = None;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SOCKET_READ_SIZE {
            return std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let mut block = [std::mem::MaybeUninit::<u8>::uninit(); SOCKET_READ_SIZE];
        let mut block = tokio::io::ReadBuf::uninit(&mut block);
        match std::pin::Pin::new(&mut this.io).poll_read(cx, &mut block) {
            Poll::Ready(Ok(())) => {
                let read = block.filled();
                let take = read.len().min(buf.remaining());
                buf.put_slice(&read[..take]);
                if take < read.len() {
                    this.leftover = Some(bytes::Bytes::copy_from_slice(&read[take..]));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for OnDemandRead<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Errors on an established OpAMP WebSocket connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// An outgoing message is larger than the limit; it was not sent and the
    /// connection stays usable (WS-11, WS-12).
    #[error("outgoing message of {size} bytes exceeds the limit of {limit} bytes; not sent")]
    OutgoingTooLarge {
        /// Framed size (header + data).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// An incoming message exceeded the limit; the connection was closed with
    /// 1009 (WS-09, WS-10).
    #[error(
        "incoming message of {size} bytes exceeds the limit of {limit} bytes; closed with 1009"
    )]
    IncomingTooLarge {
        /// The size announced or reached so far.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The peer sent a text frame; OpAMP uses binary frames only (WS-01).
    /// The connection was closed with 1003.
    #[error("received a text WebSocket frame; closed with 1003")]
    TextFrame,
    /// A binary message was not a valid OpAMP message (bad header, WS-04, or
    /// undecodable protobuf). The connection stays usable; the caller decides
    /// whether to close it.
    #[error("malformed OpAMP message: {0}")]
    Frame(#[source] FrameError),
    /// The connection is closed (or failed earlier); nothing more can be
    /// sent or received.
    #[error("connection closed")]
    Closed,
    /// The peer dropped the TCP connection without a closing handshake.
    #[error("connection reset without a closing handshake")]
    ConnectionReset,
    /// The peer did not complete the closing handshake in time (WS-17, WS-18).
    #[error("no closing handshake from the peer within {0:?}")]
    CloseTimeout(Duration),
    /// The peer violated the WebSocket protocol; closed with 1002.
    #[error("WebSocket protocol error: {0}")]
    Protocol(#[source] BoxError),
    /// The HTTP upgrade did not complete (server side).
    #[error("HTTP upgrade failed: {0}")]
    UpgradeFailed(#[source] BoxError),
    /// Socket I/O failed.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
}

impl WsError {
    /// Whether the connection is unusable after this error. Only
    /// [`WsError::OutgoingTooLarge`] and [`WsError::Frame`] leave it open.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::OutgoingTooLarge { .. } | Self::Frame(_))
    }
}

/// The code and reason of a Close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseInfo {
    /// Close status code (e.g. 1000, 1001, 1009); 1005 if the frame had none.
    pub code: u16,
    /// Close reason text (may be empty).
    pub reason: String,
}

/// Per-connection settings shared by both roles.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnSettings {
    pub(crate) max_message_size: usize,
    pub(crate) headerless: HeaderlessFrames,
    pub(crate) close_timeout: Duration,
}

impl ConnSettings {
    /// The tungstenite config enforcing our limit before buffering a frame.
    pub(crate) fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_SIZE)
            // Write each message straight away instead of batching.
            .write_buffer_size(0)
            .max_message_size(Some(self.max_message_size))
            // Checked from the frame header, before the payload is buffered.
            .max_frame_size(Some(self.max_message_size))
    }
}

/// Counts the frames a connection receives (data, ping, pong, close), so
/// that a keepalive or a liveness probe can tell a live peer from a silent
/// one. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct WsActivity {
    inner: Arc<ActivityInner>,
}

#[derive(Debug, Default)]
struct ActivityInner {
    frames: AtomicU64,
    changed: tokio::sync::Notify,
}

impl WsActivity {
    /// Frames received so far.
    pub fn frames(&self) -> u64 {
        self.inner.frames.load(Ordering::Acquire)
    }

    /// Resolves once more than `seen` frames were received. Only frames read
    /// by a task polling the receiving half count.
    pub async fn after(&self, seen: u64) {
        loop {
            let changed = self.inner.changed.notified();
            if self.frames() > seen {
                return;
            }
            changed.await;
        }
    }

    fn record(&self) {
        self.inner.frames.fetch_add(1, Ordering::AcqRel);
        self.inner.changed.notify_waiters();
    }
}

struct Shared {
    /// Frames received, for keepalives and probes.
    activity: WsActivity,
    /// `None` once the connection is released after a clean close.
    sink: tokio::sync::Mutex<Option<SplitSink<Ws, WsMessage>>>,
    close_sent: AtomicBool,
    settings: ConnSettings,
    /// Overrides `settings.close_timeout`; adjustable after the handshake.
    close_timeout_nanos: AtomicU64,
}

impl Shared {
    fn close_timeout(&self) -> Duration {
        Duration::from_nanos(self.close_timeout_nanos.load(Ordering::Relaxed))
    }

    /// Sends a Close frame once; later calls do nothing. Bounded by the close
    /// timeout so a stuck writer cannot hold a closing task forever.
    async fn send_close(&self, code: u16, reason: &str) -> Result<(), WsError> {
        if self.close_sent.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: truncate_reason(reason).into(),
        };
        let send = async {
            match self.sink.lock().await.as_mut() {
                Some(sink) => sink.send(WsMessage::Close(Some(frame))).await,
                None => Err(tungstenite::Error::AlreadyClosed),
            }
        };
        let timeout = self.close_timeout();
        match tokio::time::timeout(timeout, send).await {
            Err(_) => Err(WsError::CloseTimeout(timeout)),
            Ok(Ok(())) => Ok(()),
            Ok(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                Ok(())
            }
            Ok(Err(e)) => Err(map_io_error(e)),
        }
    }
}

fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Maps write-side and generic tungstenite errors.
fn map_io_error(error: tungstenite::Error) -> WsError {
    match error {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => WsError::Closed,
        tungstenite::Error::Protocol(tungstenite::error::ProtocolError::SendAfterClosing) => {
            WsError::Closed
        }
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => WsError::ConnectionReset,
        tungstenite::Error::Io(e) => WsError::Io(e),
        other => WsError::Protocol(Box::new(other)),
    }
}

/// The sending half of a connection. Cheap to clone; clones send on the same
/// connection, one message at a time.
pub struct WsSender<Tx> {
    shared: Arc<Shared>,
    _tx: PhantomData<fn(Tx)>,
}

impl<Tx> Clone for WsSender<Tx> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _tx: PhantomData,
        }
    }
}

impl<Tx> fmt::Debug for WsSender<Tx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsSender")
            .field(
                "close_sent",
                &self.shared.close_sent.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl<Tx: prost::Message> WsSender<Tx> {
    /// Sends one message as a binary WebSocket message.
    ///
    /// A message whose framed size exceeds the limit is not sent:
    /// [`WsError::OutgoingTooLarge`], logged as a warning, connection intact
    /// (WS-11, WS-12). Waits while the peer applies backpressure; wrap in a
    /// timeout if needed.
    pub async fn send(&self, message: &Tx) -> Result<(), WsError> {
        let limit = self.shared.settings.max_message_size;
        let frame = encode_frame(message, limit).map_err(|error| match error {
            FrameError::TooLarge { size, limit } => {
                tracing::warn!(
                    size,
                    limit,
                    "outgoing OpAMP message exceeds the size limit; dropped"
                );
                WsError::OutgoingTooLarge { size, limit }
            }
            other => WsError::Frame(other),
        })?;
        if self.shared.close_sent.load(Ordering::SeqCst) {
            return Err(WsError::Closed);
        }
        let mut sink = self.shared.sink.lock().await;
        let sink = sink.as_mut().ok_or(WsError::Closed)?;
        sink.send(WsMessage::Binary(frame))
            .await
            .map_err(map_io_error)
    }

    /// Sends a Ping frame. The peer answers with a Pong, which the receiving
    /// half counts in [`activity`](Self::activity) while it is polled.
    pub async fn ping(&self) -> Result<(), WsError> {
        if self.shared.close_sent.load(Ordering::SeqCst) {
            return Err(WsError::Closed);
        }
        let mut sink = self.shared.sink.lock().await;
        let sink = sink.as_mut().ok_or(WsError::Closed)?;
        sink.send(WsMessage::Ping(Default::default()))
            .await
            .map_err(map_io_error)
    }

    /// The connection's received-frame counter.
    pub fn activity(&self) -> WsActivity {
        self.shared.activity.clone()
    }

    /// Starts the closing handshake by sending a Close frame with `code` and
    /// `reason` (truncated to 123 bytes). Does not wait for the peer's reply:
    /// the receiving half returns `Ok(None)` once it arrives. Sending a second
    /// Close is a no-op.
    pub async fn close(&self, code: u16, reason: &str) -> Result<(), WsError> {
        self.shared.send_close(code, reason).await
    }
}

/// The receiving half of a connection.
pub struct WsReceiver<Rx> {
    /// `None` once released after a clean close.
    stream: Option<SplitStream<Ws>>,
    shared: Arc<Shared>,
    peer_close: Option<CloseInfo>,
    finished: bool,
    _rx: PhantomData<fn() -> Rx>,
}

impl<Rx> fmt::Debug for WsReceiver<Rx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsReceiver")
            .field("peer_close", &self.peer_close)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<Rx: prost::Message + Default> WsReceiver<Rx> {
    /// Receives the next message.
    ///
    /// - `Ok(Some(message))`: one decoded message.
    /// - `Ok(None)`: the connection closed cleanly (closing handshake done,
    ///   whoever started it); see [`peer_close`](Self::peer_close).
    /// - `Err(WsError::Frame(_))`: a malformed binary message (bad header,
    ///   WS-04, or bad protobuf); the connection stays open.
    /// - Any other error is fatal: oversize (closed with 1009), text frame
    ///   (closed with 1003), protocol violation (1002), reset or I/O error.
    ///   Later calls return [`WsError::Closed`].
    ///
    /// Pings are answered automatically while this is being polled, so keep
    /// a task receiving.
    pub async fn recv(&mut self) -> Result<Option<Rx>, WsError> {
        loop {
            if self.finished {
                return match self.peer_close {
                    Some(_) => Ok(None),
                    None => Err(WsError::Closed),
                };
            }
            let Some(stream) = self.stream.as_mut() else {
                self.finished = true;
                continue;
            };
            let next = stream.next().await;
            if matches!(next, Some(Ok(_))) {
                self.shared.activity.record();
            }
            match next {
                None => {
                    // tungstenite ends the stream after a completed closing
                    // handshake.
                    self.peer_close.get_or_insert(CloseInfo {
                        code: 1005,
                        reason: String::new(),
                    });
                    self.release().await;
                    return Ok(None);
                }
                Some(Ok(WsMessage::Binary(data))) => {
                    let settings = &self.shared.settings;
                    return decode_frame(data, settings.max_message_size, settings.headerless)
                        .map(Some)
                        .map_err(|error| {
                            tracing::debug!(%error, "malformed OpAMP WebSocket message");
                            WsError::Frame(error)
                        });
                }
                Some(Ok(WsMessage::Text(_))) => {
                    return Err(self
                        .fail(
                            CLOSE_UNSUPPORTED_DATA,
                            "text frames are not supported",
                            WsError::TextFrame,
                        )
                        .await);
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    self.on_peer_close(frame).await;
                    return Ok(None);
                }
                // Pongs are queued by tungstenite itself; nothing else to do.
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
                Some(Err(error)) => return Err(self.on_read_error(error).await),
            }
        }
    }

    /// The peer's Close frame, once received.
    pub fn peer_close(&self) -> Option<&CloseInfo> {
        self.peer_close.as_ref()
    }

    /// Records the peer's Close and lets tungstenite finish the handshake:
    /// its reply goes out on the next read, which then sees the end of the
    /// stream (bounded by the close timeout).
    async fn on_peer_close(&mut self, frame: Option<CloseFrame>) {
        let info = match frame {
            Some(frame) => CloseInfo {
                code: frame.code.into(),
                reason: frame.reason.as_str().to_owned(),
            },
            None => CloseInfo {
                code: 1005,
                reason: String::new(),
            },
        };
        tracing::debug!(code = info.code, reason = %info.reason, "peer closed the WebSocket");
        self.peer_close = Some(info);
        // tungstenite has queued the Close reply itself.
        self.shared.close_sent.store(true, Ordering::SeqCst);
        if let Some(stream) = self.stream.as_mut() {
            let drain = async { while stream.next().await.is_some() {} };
            if tokio::time::timeout(self.shared.close_timeout(), drain)
                .await
                .is_err()
            {
                tracing::debug!("peer did not end the connection after the closing handshake");
            }
        }
        self.release().await;
    }

    /// After a completed closing handshake: drops both halves of the socket
    /// so the TCP connection closes now, even while a sender half is still
    /// alive (a server closes first, RFC 6455 section 7.1.1). A sender stuck
    /// in backpressure keeps it open until it gives up, bounded by the
    /// close timeout here.
    async fn release(&mut self) {
        self.finished = true;
        self.stream = None;
        if let Ok(mut sink) =
            tokio::time::timeout(self.shared.close_timeout(), self.shared.sink.lock()).await
        {
            sink.take();
        }
    }

    async fn on_read_error(&mut self, error: tungstenite::Error) -> WsError {
        use tungstenite::error::{CapacityError, ProtocolError};
        match error {
            tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                tracing::warn!(
                    size,
                    limit = max_size,
                    "incoming OpAMP message exceeds the size limit; closing with 1009"
                );
                self.fail(
                    CLOSE_MESSAGE_TOO_BIG,
                    "message too big",
                    WsError::IncomingTooLarge {
                        size,
                        limit: max_size,
                    },
                )
                .await
            }
            // Invalid UTF-8 in a text frame is still a text frame.
            tungstenite::Error::Utf8(_) => {
                self.fail(
                    CLOSE_UNSUPPORTED_DATA,
                    "text frames are not supported",
                    WsError::TextFrame,
                )
                .await
            }
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                self.finished = true;
                WsError::ConnectionReset
            }
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                self.finished = true;
                WsError::Closed
            }
            tungstenite::Error::Io(e) => {
                self.finished = true;
                WsError::Io(e)
            }
            other => {
                self.fail(
                    CLOSE_PROTOCOL_ERROR,
                    "protocol error",
                    WsError::Protocol(Box::new(other)),
                )
                .await
            }
        }
    }

    /// Marks the receiver failed and sends a Close frame (best effort).
    async fn fail(&mut self, code: u16, reason: &str, error: WsError) -> WsError {
        self.finished = true;
        if let Err(close_error) = self.shared.send_close(code, reason).await {
            tracing::debug!(%close_error, code, "could not send Close frame after a fatal error");
        }
        error
    }
}

/// A full-duplex OpAMP WebSocket connection sending `Tx` and receiving `Rx`.
///
/// Use [`WsClientConnection`](super::client::WsClientConnection) (agent side) or
/// [`WsServerConnection`](super::server::WsServerConnection) (server side). Call
/// [`split`](Self::split) to send and receive from different tasks.
pub struct WsConnection<Tx, Rx> {
    sender: WsSender<Tx>,
    receiver: WsReceiver<Rx>,
}

impl<Tx, Rx> fmt::Debug for WsConnection<Tx, Rx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConnection")
            .field("sender", &self.sender)
            .field("receiver", &self.receiver)
            .finish()
    }
}

/// [`WsConnection::reunite`] was given halves of different connections.
#[derive(Debug, thiserror::Error)]
#[error("the sender and receiver belong to different connections")]
pub struct ReuniteError<Tx, Rx> {
    /// The sender, returned unchanged.
    pub sender: WsSender<Tx>,
    /// The receiver, returned unchanged.
    pub receiver: WsReceiver<Rx>,
}

impl<Tx: prost::Message, Rx: prost::Message + Default> WsConnection<Tx, Rx> {
    pub(crate) fn new(ws: Ws, settings: ConnSettings) -> Self {
        let (sink, stream) = ws.split();
        let shared = Arc::new(Shared {
            activity: WsActivity::default(),
            sink: tokio::sync::Mutex::new(Some(sink)),
            close_sent: AtomicBool::new(false),
            settings,
            close_timeout_nanos: AtomicU64::new(duration_nanos(settings.close_timeout)),
        });
        Self {
            sender: WsSender {
                shared: shared.clone(),
                _tx: PhantomData,
            },
            receiver: WsReceiver {
                stream: Some(stream),
                shared,
                peer_close: None,
                finished: false,
                _rx: PhantomData,
            },
        }
    }

    /// Sends one message; see [`WsSender::send`].
    pub async fn send(&self, message: &Tx) -> Result<(), WsError> {
        self.sender.send(message).await
    }

    /// Receives the next message; see [`WsReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Rx>, WsError> {
        self.receiver.recv().await
    }

    /// The peer's Close frame, once received.
    pub fn peer_close(&self) -> Option<&CloseInfo> {
        self.receiver.peer_close()
    }

    /// Splits into halves for full-duplex use from separate tasks.
    pub fn split(self) -> (WsSender<Tx>, WsReceiver<Rx>) {
        (self.sender, self.receiver)
    }

    /// Joins halves from [`split`](Self::split) again, e.g. to
    /// [`close`](Self::close) with a bounded wait.
    pub fn reunite(
        sender: WsSender<Tx>,
        receiver: WsReceiver<Rx>,
    ) -> Result<Self, ReuniteError<Tx, Rx>> {
        if Arc::ptr_eq(&sender.shared, &receiver.shared) {
            Ok(Self { sender, receiver })
        } else {
            Err(ReuniteError { sender, receiver })
        }
    }

    /// Closes with 1000 (normal closure); see [`close_with`](Self::close_with).
    pub async fn close(self) -> Result<(), WsError> {
        self.close_with(CLOSE_NORMAL, "").await
    }

    /// Runs the RFC 6455 closing procedure (WS-17, WS-18): sends a Close
    /// frame with `code` (unless one was sent already), then reads until the
    /// peer's Close and the end of the stream, discarding data messages.
    /// The whole wait is bounded by the close timeout; if the peer's Close
    /// does not arrive in time, returns [`WsError::CloseTimeout`]. The
    /// connection is dropped (socket closed) either way.
    ///
    /// An agent should send its `agent_disconnect` message before this
    /// (WS-17).
    pub async fn close_with(mut self, code: u16, reason: &str) -> Result<(), WsError> {
        let timeout = self.sender.shared.close_timeout();
        let procedure = async {
            match self.sender.shared.send_close(code, reason).await {
                // The peer may have closed first; the read loop sorts it out.
                Ok(()) | Err(WsError::Closed) => {}
                Err(e) => return Err(e),
            }
            loop {
                match self.receiver.recv().await {
                    Ok(Some(_)) | Err(WsError::Frame(_)) => continue,
                    Ok(None) => return Ok(()),
                    // Whatever ended the stream, the socket is done.
                    Err(WsError::Closed | WsError::ConnectionReset) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(timeout, procedure).await {
            Ok(result) => result,
            // The peer's Close arrived; only waiting for the socket to end
            // ran out of time, which is the peer's business.
            Err(_) if self.receiver.peer_close.is_some() => Ok(()),
            Err(_) => Err(WsError::CloseTimeout(timeout)),
        }
    }

    /// Changes how long closing waits for the peer (default
    /// [`DEFAULT_CLOSE_TIMEOUT`], 5 s). Applies to both halves.
    pub fn set_close_timeout(&self, timeout: Duration) {
        self.sender
            .shared
            .close_timeout_nanos
            .store(duration_nanos(timeout), Ordering::Relaxed);
    }
}

fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A message far larger than tungstenite's small read buffer arrives
    /// intact through small reads, and once it is consumed the reader holds
    /// no buffered bytes: an idle connection keeps no read-ahead buffer.
    #[tokio::test]
    async fn on_demand_read_hands_out_everything_and_keeps_nothing_when_idle() {
        let (mut peer, socket) = tokio::io::duplex(64 * 1024);
        let mut reader = OnDemandRead::new(socket);
        let message: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let message = message.clone();
            tokio::spawn(async move {
                peer.write_all(&message).await.unwrap();
                peer
            })
        };
        let mut received = Vec::new();
        let mut small = [0u8; READ_BUFFER_SIZE];
        while received.len() < message.len() {
            let read = reader.read(&mut small).await.unwrap();
            assert!(read > 0, "early end after {} bytes", received.len());
            received.extend_from_slice(&small[..read]);
        }
        assert_eq!(received, message);
        assert!(reader.leftover.is_none(), "idle reader keeps a buffer");

        // A read larger than one socket block goes straight to the socket.
        let mut peer = writer.await.unwrap();
        peer.write_all(&[7; 3]).await.unwrap();
        let mut large = vec![0u8; 2 * SOCKET_READ_SIZE];
        assert_eq!(reader.read(&mut large).await.unwrap(), 3);
        assert!(reader.leftover.is_none());
        drop(peer);
        assert_eq!(reader.read(&mut small).await.unwrap(), 0, "end of stream");
    }
}
