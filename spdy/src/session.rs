//! An async SPDY/3.1 *server* session over any byte transport.
//!
//! The peer (kubectl / kubelet's client side, i.e. moby/spdystream, or
//! spdy-transport in our tests) opens streams with SYN_STREAM (odd ids); we
//! answer each with SYN_REPLY and hand it to the application as an
//! [`IncomingStream`], which is an `AsyncRead` (data from the client) plus
//! an `AsyncWrite` (DATA frames to the client).
//!
//! # Tasks
//!
//! [`Session::server`] spawns two tasks:
//!
//! * the **reader** owns the transport's read half and the header
//!   decompressor; it parses frames, updates shared state and queues
//!   replies (SYN_REPLY, RST_STREAM) for the writer;
//! * the **writer** owns the write half and the header compressor, and is
//!   the only place frames are serialised. Compression happens there, in
//!   wire order, because both sides share one zlib stream per direction.
//!
//! Everything that must keep its order (SYN_REPLY before a stream's DATA,
//! a stream's DATA before its FIN or RST) goes through one FIFO. Its
//! depth is bounded by a semaphore of "slots" (see
//! [`SessionConfig::write_queue`]): DATA frames and the reader's own
//! replies take a slot and give it back only once the bytes have been
//! written to the transport, so a client that stops reading stalls our
//! stream writers and, eventually, our reading of its frames. FIN and RST
//! issued from synchronous contexts (`Drop`, `reset`) skip the slot: there
//! is at most one of each per stream. WINDOW_UPDATE and PING replies are
//! order-insensitive and are coalesced in shared state instead of queued.
//!
//! # SYN_REPLY
//!
//! Kubernetes' server side (`k8s.io/apimachinery/pkg/util/httpstream/spdy`,
//! `connection.newSpdyStream`) calls `stream.SendReply(http.Header{}, false)`
//! as soon as its handler accepts a stream, and the spdystream client waits
//! for that reply (`CreateStream` + `WaitTimeout(30s)`); spdystream also
//! *drops* DATA that arrives on a stream before its SYN_REPLY
//! (`handleDataFrame`: `if !stream.replied { return nil }`). So we reply to
//! every accepted stream immediately, before the application sees it, and
//! before any DATA can be queued. spdystream ignores the reply's headers;
//! spdy-transport refuses a reply without `:status` (it sends RST
//! PROTOCOL_ERROR), so by default we send `:status: 200` and
//! `:version: HTTP/1.1` (the SPDY/3 HTTP layer's response headers), see
//! [`SessionConfig::reply_headers`]. Streams opened with
//! FLAG_UNIDIRECTIONAL get no reply (the recipient of such a stream may not
//! send on it, as with pushed streams).
//!
//! # Flow control
//!
//! moby/spdystream implements no flow control at all: its framer parses
//! WINDOW_UPDATE and SETTINGS frames, but `Connection.frameHandler` has no
//! case for them (they fall to `default: unhandled frame type`), nothing in
//! it ever writes a WINDOW_UPDATE or SETTINGS frame, and `Stream.Write`
//! sends one DATA frame per call regardless of any window (see
//! `connection.go` `frameHandler` / `Serve` and `stream.go` `WriteData` in
//! github.com/moby/spdystream, as vendored by kubernetes). A server that
//! waited for window credit would therefore stall after 64 KiB per stream
//! with a real kubectl.
//!
//! spdy-transport, by contrast, does SPDY/3.1 flow control: it opens with
//! SETTINGS(INITIAL_WINDOW_SIZE) and a session WINDOW_UPDATE, refuses to
//! send beyond the windows we grant, and sends WINDOW_UPDATE as its
//! application reads.
//!
//! So, like other lenient implementations, we always *account* our send
//! windows (initial 64 KiB per stream and per session, adjusted by
//! SETTINGS_INITIAL_WINDOW_SIZE and WINDOW_UPDATE), but only *enforce* them
//! once the peer has shown it does flow control, by sending either a
//! SETTINGS frame carrying INITIAL_WINDOW_SIZE or any WINDOW_UPDATE. A
//! flow-controlling peer announces itself before it opens streams, so its
//! accounting and ours agree from the first byte.
//!
//! On the receive side we send WINDOW_UPDATE (stream and session) as the
//! application consumes data, once half a window has been consumed. We
//! cannot rely on the peer honouring our windows, so memory is bounded
//! separately: when a stream has more than
//! [`SessionConfig::max_stream_buffer`] bytes buffered, the reader task
//! stops reading the transport until the application catches up (TCP
//! backpressure). This is head-of-line blocking across streams, exactly
//! what spdystream's own unbuffered `dataChan` does.

use crate::frame::{
    FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, FrameDecoder, FrameError, GoAwayStatus, Limits,
    RstStatus, Setting, settings_id,
};
use crate::headers::{
    DEFAULT_MAX_HEADER_LIST_SIZE, HeaderCompressor, HeaderDecompressor, HeaderError, HeaderList,
};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::{CancellationToken, PollSemaphore};
use tracing::{debug, trace, warn};

/// The SPDY/3 default initial window, per stream and (3.1) per session.
pub const DEFAULT_WINDOW: u32 = 64 * 1024;
const MAX_WINDOW: i64 = 0x7fff_ffff;
/// How long the writer may keep flushing after the reader has stopped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Stop batching writes once this much is encoded.
const WRITE_BATCH: usize = 64 * 1024;

/// Tunables for a [`Session`].
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Headers sent in every SYN_REPLY. Default: `:status: 200`,
    /// `:version: HTTP/1.1` (see the module docs for why).
    pub reply_headers: HeaderList,
    /// Receive window we grant per stream. If it differs from 64 KiB we
    /// announce it with SETTINGS_INITIAL_WINDOW_SIZE, and raise the session
    /// window to match with a WINDOW_UPDATE. Clamped to 1..=2^31-1.
    pub initial_recv_window: u32,
    /// Bytes buffered per stream before we stop reading the transport.
    /// Raised to at least `initial_recv_window`.
    pub max_stream_buffer: usize,
    /// Largest DATA payload we send (writes are split). Clamped to
    /// 1..=2^24-1.
    pub max_data_frame: usize,
    /// Depth of the outgoing frame queue (in frames, at least 1).
    pub write_queue: usize,
    /// Incoming streams waiting for the application to accept them.
    pub accept_backlog: usize,
    /// Parser size limits.
    pub frame_limits: Limits,
    /// Cap on one decompressed header block.
    pub max_header_list_size: usize,
    /// PING replies allowed to be pending; further pings are dropped.
    pub max_pending_pings: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            reply_headers: vec![
                (":status".into(), "200".into()),
                (":version".into(), "HTTP/1.1".into()),
            ],
            initial_recv_window: DEFAULT_WINDOW,
            max_stream_buffer: 1 << 20,
            max_data_frame: 32 * 1024,
            write_queue: 64,
            accept_backlog: 16,
            frame_limits: Limits::default(),
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
            max_pending_pings: 64,
        }
    }
}

impl SessionConfig {
    fn normalized(mut self) -> Self {
        self.initial_recv_window = self.initial_recv_window.clamp(1, MAX_WINDOW as u32);
        self.max_stream_buffer = self
            .max_stream_buffer
            .max(self.initial_recv_window as usize);
        self.max_data_frame = self
            .max_data_frame
            .clamp(1, crate::frame::MAX_FRAME_PAYLOAD as usize);
        self.write_queue = self.write_queue.max(1);
        self.accept_backlog = self.accept_backlog.max(1);
        self
    }

    /// Consumed bytes after which we send a WINDOW_UPDATE.
    fn credit_threshold(&self) -> u32 {
        (self.initial_recv_window / 2).max(1)
    }
}

/// Session-level failures.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The transport failed.
    #[error("transport I/O error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not valid SPDY/3 framing.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Header (de)compression failed in a way that breaks the session.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The peer broke a session-level protocol rule.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The session was closed.
    #[error("session closed")]
    Closed,
}

impl SessionError {
    /// Whether the peer should be told with GOAWAY(PROTOCOL_ERROR).
    fn is_protocol(&self) -> bool {
        matches!(
            self,
            SessionError::Frame(_) | SessionError::Header(_) | SessionError::Protocol(_)
        )
    }
}

/// The error inside the `io::Error` (kind `ConnectionReset`) that stream
/// reads and writes return once the stream has been reset. Note that
/// kubectl resets all its streams (RST_STREAM CANCEL) when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamReset {
    /// The RST_STREAM status.
    pub status: RstStatus,
    /// True if the peer sent the RST_STREAM, false if we did.
    pub by_peer: bool,
}

impl std::fmt::Display for StreamReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let by = if self.by_peer { "peer" } else { "us" };
        write!(f, "SPDY stream reset by {by} with {}", self.status)
    }
}

impl std::error::Error for StreamReset {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks cannot leave the state
    // half-updated in a way that matters more than losing the session, so
    // recover rather than propagate the poison.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn session_closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "SPDY session closed")
}

/// Entry point: see [`Session::server`].
#[derive(Debug)]
pub struct Session(());

impl Session {
    /// Starts a server session on `io` with the default configuration.
    ///
    /// Must be called within a Tokio runtime. Returns a handle to control
    /// the session and the receiver of client-opened streams; the receiver
    /// yields `None` after the client's GOAWAY or when the session ends.
    pub fn server<T>(io: T) -> (SessionHandle, mpsc::Receiver<IncomingStream>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::server_with_config(io, SessionConfig::default())
    }

    /// Like [`Session::server`] with explicit tunables.
    pub fn server_with_config<T>(
        io: T,
        config: SessionConfig,
    ) -> (SessionHandle, mpsc::Receiver<IncomingStream>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = config.normalized();
        let (rd, wr) = tokio::io::split(io);
        let (tx, rx) = mpsc::unbounded_channel();
        let (accept_tx, accept_rx) = mpsc::channel(config.accept_backlog);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            writer_wake: Notify::new(),
            tx,
            slots: Arc::new(Semaphore::new(config.write_queue)),
            cancel: CancellationToken::new(),
            done: CancellationToken::new(),
            config,
        });

        let reader = tokio::spawn(reader_task(shared.clone(), rd, accept_tx));
        let mut writer = tokio::spawn(writer_task(shared.clone(), wr, rx));
        let sup = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = reader.await {
                warn!(error = %e, "spdy reader task failed");
            }
            // Once nothing more is read, the writer only has queued output
            // (e.g. a GOAWAY) to flush; don't wait forever on a peer that
            // no longer reads.
            let res = match tokio::time::timeout(CLOSE_GRACE, &mut writer).await {
                Ok(res) => res,
                Err(_) => {
                    debug!("writer did not finish in time; aborting session");
                    sup.cancel.cancel();
                    writer.await
                }
            };
            if let Err(e) = res {
                warn!(error = %e, "spdy writer task failed");
            }
            sup.cancel.cancel();
            sup.close_streams();
            sup.done.cancel();
            debug!("spdy session finished");
        });
        (SessionHandle { shared }, accept_rx)
    }
}

/// Controls a running session. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    shared: Arc<Shared>,
}

impl SessionHandle {
    /// Sends GOAWAY naming the last stream we accepted. Streams the client
    /// opens afterwards are ignored (as the spec requires); once every open
    /// stream has finished, the session flushes and closes the transport.
    pub fn goaway(&self, status: GoAwayStatus) {
        let sh = &self.shared;
        let mut st = lock(&sh.state);
        if st.goaway_sent || st.closed {
            return;
        }
        st.goaway_sent = true;
        let frame = Frame::GoAway {
            last_good_stream_id: st.last_client_stream,
            status,
        };
        debug!(?frame, "sending GOAWAY");
        sh.enqueue(CmdKind::Frame(frame), None);
        sh.finish_if_idle(&mut st);
    }

    /// Tears the session down now: pending output is dropped, stream reads
    /// and writes fail.
    pub fn close(&self) {
        self.shared.cancel.cancel();
    }

    /// Resolves once both session tasks have finished.
    pub async fn closed(&self) {
        self.shared.done.cancelled().await;
    }

    /// True once the session has finished.
    pub fn is_closed(&self) -> bool {
        self.shared.done.is_cancelled()
    }

    /// Number of streams not yet fully closed.
    pub fn active_streams(&self) -> usize {
        lock(&self.shared.state).streams.len()
    }
}

// ---------------------------------------------------------------------------
// Shared state

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer when `State::pending_*` gained entries.
    writer_wake: Notify,
    /// The ordered frame queue to the writer (depth bounded by `slots`).
    tx: mpsc::UnboundedSender<Cmd>,
    slots: Arc<Semaphore>,
    /// Abort: both tasks stop as soon as they see it.
    cancel: CancellationToken,
    /// Both tasks have finished.
    done: CancellationToken,
    config: SessionConfig,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("closed", &self.done.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Lock order: `Shared::state` before any `StreamShared::inner`.
struct State {
    streams: HashMap<u32, Arc<StreamShared>>,
    /// Highest client stream id seen (ids must increase).
    last_client_stream: u32,
    goaway_sent: bool,
    goaway_received: bool,
    /// A graceful `Close` has been queued.
    closing: bool,
    /// The session is over; no stream can make progress.
    closed: bool,
    /// The peer has shown it does flow control: enforce our send windows.
    peer_flow_control: bool,
    /// Peer's SETTINGS_INITIAL_WINDOW_SIZE (our initial per-stream send window).
    peer_initial_window: i64,
    /// Session send window (SPDY/3.1).
    send_window: i64,
    /// Writers blocked on the session window.
    send_waiters: Vec<Waker>,
    /// Bytes consumed (or discarded) since the last session WINDOW_UPDATE.
    recv_unacked: u32,
    pending_session_credit: u32,
    pending_stream_credit: HashMap<u32, u32>,
    pending_pings: VecDeque<u32>,
}

impl State {
    fn new() -> Self {
        Self {
            streams: HashMap::new(),
            last_client_stream: 0,
            goaway_sent: false,
            goaway_received: false,
            closing: false,
            closed: false,
            peer_flow_control: false,
            peer_initial_window: DEFAULT_WINDOW as i64,
            send_window: DEFAULT_WINDOW as i64,
            send_waiters: Vec::new(),
            recv_unacked: 0,
            pending_session_credit: 0,
            pending_stream_credit: HashMap::new(),
            pending_pings: VecDeque::new(),
        }
    }

    fn wake_send_waiters(&mut self) {
        for w in self.send_waiters.drain(..) {
            w.wake();
        }
    }
}

struct StreamShared {
    id: u32,
    inner: Mutex<StreamInner>,
    /// Signalled when the buffer drops back under the limit, or nobody
    /// will read it any more; the reader task waits on it.
    space: Notify,
}

#[derive(Default)]
struct StreamInner {
    recv: VecDeque<Bytes>,
    buffered: usize,
    remote_fin: bool,
    reset: Option<StreamReset>,
    session_closed: bool,
    reader_dropped: bool,
    read_waker: Option<Waker>,
    /// Consumed since our last WINDOW_UPDATE for this stream.
    recv_unacked: u32,
    send_window: i64,
    local_fin: bool,
    write_waker: Option<Waker>,
}

impl StreamInner {
    fn wake_all(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }

    /// Drops buffered data, returning how many bytes were discarded.
    fn discard(&mut self) -> usize {
        self.recv.clear();
        std::mem::take(&mut self.buffered)
    }

    fn fully_closed(&self) -> bool {
        self.reset.is_some() || (self.remote_fin && self.local_fin)
    }

    fn write_error(&self) -> Option<io::Error> {
        if let Some(r) = self.reset {
            Some(io::Error::new(io::ErrorKind::ConnectionReset, r))
        } else if self.session_closed {
            Some(session_closed_error())
        } else if self.local_fin {
            Some(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write on a SPDY stream after shutdown",
            ))
        } else {
            None
        }
    }
}

struct Cmd {
    kind: CmdKind,
    /// Queue slot, released once the frame is written to the transport.
    slot: Option<OwnedSemaphorePermit>,
}

enum CmdKind {
    Frame(Frame),
    /// SYN_REPLY with the configured headers; compressed by the writer.
    Reply(u32),
    /// Flush everything queued before this, then close the transport.
    Close,
}

impl Shared {
    fn enqueue(&self, kind: CmdKind, slot: Option<OwnedSemaphorePermit>) -> bool {
        self.tx.send(Cmd { kind, slot }).is_ok()
    }

    /// Queues a graceful close if GOAWAY was exchanged and no stream is
    /// left open.
    fn finish_if_idle(&self, st: &mut State) {
        if (st.goaway_sent || st.goaway_received) && st.streams.is_empty() && !st.closing {
            debug!("no streams left after GOAWAY; closing session");
            st.closing = true;
            self.enqueue(CmdKind::Close, None);
        }
    }

    fn remove_stream(&self, st: &mut State, id: u32) {
        if st.streams.remove(&id).is_some() {
            trace!(stream_id = id, "stream closed");
            st.pending_stream_credit.remove(&id);
            self.finish_if_idle(st);
        }
    }

    /// Records `consumed` bytes as read (or discarded) at session level and
    /// `stream_credit` bytes to be returned to the stream's window; wakes
    /// the writer if a WINDOW_UPDATE is due.
    fn credit(&self, stream_id: u32, stream_credit: u32, consumed: usize) {
        let threshold = self.config.credit_threshold();
        let mut st = lock(&self.state);
        let mut wake = false;
        if stream_credit > 0 && st.streams.contains_key(&stream_id) {
            *st.pending_stream_credit.entry(stream_id).or_default() += stream_credit;
            wake = true;
        }
        st.recv_unacked = st.recv_unacked.saturating_add(consumed as u32);
        if st.recv_unacked >= threshold {
            st.pending_session_credit = st
                .pending_session_credit
                .saturating_add(std::mem::take(&mut st.recv_unacked));
            wake = true;
        }
        drop(st);
        if wake {
            self.writer_wake.notify_one();
        }
    }

    /// Resets a stream from our side and tells the peer (RST_STREAM).
    fn reset_stream(&self, stream: &StreamShared, status: RstStatus) {
        let mut st = lock(&self.state);
        let mut inner = lock(&stream.inner);
        if inner.fully_closed() || inner.session_closed {
            return;
        }
        debug!(stream_id = stream.id, %status, "resetting stream");
        inner.reset = Some(StreamReset {
            status,
            by_peer: false,
        });
        let discarded = inner.discard();
        inner.wake_all();
        // Queued under the lock so it is ordered after any DATA this
        // stream already queued.
        self.enqueue(
            CmdKind::Frame(Frame::RstStream {
                stream_id: stream.id,
                status,
            }),
            None,
        );
        drop(inner);
        st.recv_unacked = st.recv_unacked.saturating_add(discarded as u32);
        self.remove_stream(&mut st, stream.id);
        drop(st);
        stream.space.notify_one();
    }

    /// Marks the session over and fails every open stream.
    fn close_streams(&self) {
        let streams: Vec<_> = {
            let mut st = lock(&self.state);
            if st.closed {
                return;
            }
            st.closed = true;
            st.wake_send_waiters();
            st.streams.drain().map(|(_, s)| s).collect()
        };
        for s in streams {
            let mut inner = lock(&s.inner);
            inner.session_closed = true;
            inner.wake_all();
            drop(inner);
            s.space.notify_one();
        }
        self.slots.close();
    }

    /// Encodes pending PING replies and WINDOW_UPDATEs into `out`.
    fn take_pending_control(&self, out: &mut BytesMut) -> Result<(), FrameError> {
        let mut st = lock(&self.state);
        for id in st.pending_pings.drain(..) {
            trace!(id, "send PING reply");
            Frame::Ping { id }.encode(out)?;
        }
        let session = std::mem::take(&mut st.pending_session_credit);
        if session > 0 {
            trace!(stream_id = 0, delta = session, "send WINDOW_UPDATE");
            Frame::WindowUpdate {
                stream_id: 0,
                delta: session,
            }
            .encode(out)?;
        }
        for (stream_id, delta) in st.pending_stream_credit.drain() {
            trace!(stream_id, delta, "send WINDOW_UPDATE");
            Frame::WindowUpdate { stream_id, delta }.encode(out)?;
        }
        Ok(())
    }
}

async fn until_cancelled<F: Future>(
    cancel: &CancellationToken,
    f: F,
) -> Result<F::Output, SessionError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(SessionError::Closed),
        v = f => Ok(v),
    }
}

// ---------------------------------------------------------------------------
// Writer task

async fn writer_task<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    match writer_loop(&shared, &mut wr, &mut rx).await {
        Ok(()) => trace!("spdy writer done"),
        Err(e) => debug!(error = %e, "spdy writer stopped"),
    }
    // Best effort: signal end of output to the peer.
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    shared.cancel.cancel();
    shared.close_streams();
}

async fn writer_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    wr: &mut W,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
) -> Result<(), SessionError> {
    let mut compressor = HeaderCompressor::new()?;
    let mut out = BytesMut::with_capacity(WRITE_BATCH + 1024);
    let mut slots = Vec::new();

    let window = shared.config.initial_recv_window;
    if window != DEFAULT_WINDOW {
        Frame::Settings {
            flags: 0,
            entries: vec![Setting {
                flags: 0,
                id: settings_id::INITIAL_WINDOW_SIZE,
                value: window,
            }],
        }
        .encode(&mut out)?;
        // The session window starts at 64 KiB whatever SETTINGS say.
        if window > DEFAULT_WINDOW {
            Frame::WindowUpdate {
                stream_id: 0,
                delta: window - DEFAULT_WINDOW,
            }
            .encode(&mut out)?;
        }
    }

    loop {
        let first = if out.is_empty() {
            tokio::select! {
                biased;
                _ = shared.cancel.cancelled() => return Ok(()),
                _ = shared.writer_wake.notified() => None,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => Some(cmd),
                    None => return Ok(()),
                },
            }
        } else {
            None
        };
        shared.take_pending_control(&mut out)?;

        let mut close = false;
        let mut next = first;
        while let Some(cmd) = next {
            if let Some(slot) = cmd.slot {
                slots.push(slot);
            }
            match cmd.kind {
                CmdKind::Frame(frame) => {
                    trace!(kind = frame.kind(), "send");
                    frame.encode(&mut out)?;
                }
                CmdKind::Reply(stream_id) => {
                    let header_block = compressor.compress(&shared.config.reply_headers)?;
                    trace!(stream_id, "send SYN_REPLY");
                    Frame::SynReply {
                        stream_id,
                        flags: 0,
                        header_block: header_block.into(),
                    }
                    .encode(&mut out)?;
                }
                CmdKind::Close => close = true,
            }
            if close || out.len() >= WRITE_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }

        if !out.is_empty() {
            until_cancelled(&shared.cancel, async {
                wr.write_all(&out).await?;
                wr.flush().await
            })
            .await??;
            out.clear();
        }
        // Only now is the queued data really out of our hands.
        slots.clear();
        if close {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------
// Reader task

async fn reader_task<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    rd: R,
    accept: mpsc::Sender<IncomingStream>,
) {
    let decompressor = HeaderDecompressor::new(shared.config.max_header_list_size);
    let mut reader = FrameReader {
        shared: shared.clone(),
        accept: Some(accept),
        decompressor,
    };
    let res = reader.run(rd).await;
    drop(reader); // closes the accept channel
    match res {
        Ok(()) | Err(SessionError::Closed) => {
            debug!("spdy transport closed by peer");
            shared.cancel.cancel();
        }
        Err(e) if e.is_protocol() => {
            warn!(error = %e, "spdy protocol error; sending GOAWAY");
            let last = lock(&shared.state).last_client_stream;
            // Flush what is queued, tell the peer why, then close.
            shared.enqueue(
                CmdKind::Frame(Frame::GoAway {
                    last_good_stream_id: last,
                    status: GoAwayStatus::PROTOCOL_ERROR,
                }),
                None,
            );
            shared.enqueue(CmdKind::Close, None);
        }
        Err(e) => {
            debug!(error = %e, "spdy transport read failed");
            shared.cancel.cancel();
        }
    }
    shared.close_streams();
}

struct FrameReader {
    shared: Arc<Shared>,
    /// `None` once the client sent GOAWAY or the application stopped
    /// accepting.
    accept: Option<mpsc::Sender<IncomingStream>>,
    decompressor: HeaderDecompressor,
}

enum Admission {
    Accept(HeaderList),
    Reject(RstStatus),
    Ignore,
}

impl FrameReader {
    async fn run<R: AsyncRead + Unpin>(&mut self, mut rd: R) -> Result<(), SessionError> {
        let mut buf = BytesMut::with_capacity(32 * 1024);
        let mut decoder = FrameDecoder::new(self.shared.config.frame_limits);
        loop {
            while let Some(frame) = decoder.decode(&mut buf)? {
                trace!(kind = frame.kind(), "recv");
                self.handle(frame).await?;
            }
            if buf.capacity() - buf.len() < 8 * 1024 {
                buf.reserve(32 * 1024);
            }
            let n = until_cancelled(&self.shared.cancel, rd.read_buf(&mut buf)).await??;
            if n == 0 {
                if !buf.is_empty() {
                    debug!(pending = buf.len(), "transport closed mid-frame");
                }
                return Ok(());
            }
        }
    }

    /// Queues a control frame in order with everything else, waiting for a
    /// queue slot (this is where a non-reading client stalls our reading).
    async fn send(&self, kind: CmdKind) -> Result<(), SessionError> {
        let slot = until_cancelled(
            &self.shared.cancel,
            self.shared.slots.clone().acquire_owned(),
        )
        .await?
        .map_err(|_| SessionError::Closed)?;
        if self.shared.enqueue(kind, Some(slot)) {
            Ok(())
        } else {
            Err(SessionError::Closed)
        }
    }

    async fn send_rst(&self, stream_id: u32, status: RstStatus) -> Result<(), SessionError> {
        self.send(CmdKind::Frame(Frame::RstStream { stream_id, status }))
            .await
    }

    /// Decompresses a header block. Every block must go through here, even
    /// for frames we then ignore, to keep the zlib context in step. Errors
    /// that desynchronise it are returned as session errors; the rest as
    /// the inner `Err` for the caller to turn into a stream error.
    fn headers(&mut self, block: &[u8]) -> Result<Result<HeaderList, HeaderError>, SessionError> {
        match self.decompressor.decompress(block) {
            Ok(h) => Ok(Ok(h)),
            Err(e) if e.is_fatal() => Err(e.into()),
            Err(e) => Ok(Err(e)),
        }
    }

    fn stream(&self, id: u32) -> Option<Arc<StreamShared>> {
        lock(&self.shared.state).streams.get(&id).cloned()
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), SessionError> {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                header_block,
                ..
            } => self.on_syn_stream(stream_id, flags, &header_block).await,
            Frame::SynReply {
                stream_id,
                header_block,
                ..
            } => {
                let _ = self.headers(&header_block)?;
                warn!(
                    stream_id,
                    "ignoring SYN_REPLY from client (we open no streams)"
                );
                Ok(())
            }
            Frame::Headers {
                stream_id,
                flags,
                header_block,
            } => {
                let headers = self.headers(&header_block)?;
                let Some(stream) = self.stream(stream_id) else {
                    trace!(stream_id, "HEADERS for unknown stream ignored");
                    return Ok(());
                };
                match headers {
                    Ok(h) => debug!(stream_id, headers = ?h, "ignoring HEADERS"),
                    Err(e) => {
                        warn!(stream_id, error = %e, "bad HEADERS block");
                        self.shared.reset_stream(&stream, RstStatus::PROTOCOL_ERROR);
                        return Ok(());
                    }
                }
                if flags & FLAG_FIN != 0 {
                    self.remote_fin(&stream);
                }
                Ok(())
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => self.on_data(stream_id, flags, data).await,
            Frame::RstStream { stream_id, status } => {
                self.on_rst(stream_id, status);
                Ok(())
            }
            Frame::Settings { entries, .. } => self.on_settings(&entries),
            Frame::Ping { id } => {
                self.on_ping(id);
                Ok(())
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                debug!(last_good_stream_id, %status, "GOAWAY from client");
                self.accept = None;
                let mut st = lock(&self.shared.state);
                st.goaway_received = true;
                self.shared.finish_if_idle(&mut st);
                Ok(())
            }
            Frame::WindowUpdate { stream_id, delta } => self.on_window_update(stream_id, delta),
        }
    }

    async fn on_syn_stream(
        &mut self,
        id: u32,
        flags: u8,
        block: &[u8],
    ) -> Result<(), SessionError> {
        // Decompress first, whatever we decide, to keep zlib in step.
        let headers = self.headers(block)?;
        let fin = flags & FLAG_FIN != 0;
        let unidirectional = flags & FLAG_UNIDIRECTIONAL != 0;
        let accepting = self.accept.as_ref().is_some_and(|a| !a.is_closed());

        let admission = {
            let mut st = lock(&self.shared.state);
            if st.goaway_sent || st.goaway_received || st.closing {
                Admission::Ignore
            } else if id.is_multiple_of(2) || id <= st.last_client_stream {
                // Ids must be odd (client-initiated) and increasing;
                // spdystream answers the same way.
                Admission::Reject(RstStatus::PROTOCOL_ERROR)
            } else {
                st.last_client_stream = id;
                match headers {
                    Err(e) => {
                        warn!(stream_id = id, error = %e, "bad SYN_STREAM headers");
                        Admission::Reject(RstStatus::PROTOCOL_ERROR)
                    }
                    Ok(_) if !accepting => Admission::Reject(RstStatus::REFUSED_STREAM),
                    Ok(h) => Admission::Accept(h),
                }
            }
        };
        let headers = match admission {
            Admission::Accept(h) => h,
            Admission::Ignore => {
                debug!(stream_id = id, "ignoring SYN_STREAM after GOAWAY");
                return Ok(());
            }
            Admission::Reject(status) => {
                debug!(stream_id = id, %status, "rejecting SYN_STREAM");
                return self.send_rst(id, status).await;
            }
        };

        let stream = {
            let mut st = lock(&self.shared.state);
            let stream = Arc::new(StreamShared {
                id,
                inner: Mutex::new(StreamInner {
                    send_window: st.peer_initial_window,
                    remote_fin: fin,
                    local_fin: unidirectional,
                    ..Default::default()
                }),
                space: Notify::new(),
            });
            if !(fin && unidirectional) {
                st.streams.insert(id, stream.clone());
            }
            stream
        };
        debug!(
            stream_id = id,
            ?headers,
            fin,
            unidirectional,
            "stream opened"
        );

        // The reply is queued before the application can queue any DATA.
        if !unidirectional {
            self.send(CmdKind::Reply(id)).await?;
        }

        let incoming = IncomingStream {
            id,
            headers,
            fin,
            unidirectional,
            reader: StreamReader {
                shared: self.shared.clone(),
                stream: stream.clone(),
            },
            writer: StreamWriter {
                shared: self.shared.clone(),
                stream: stream.clone(),
                slots: PollSemaphore::new(self.shared.slots.clone()),
            },
        };
        let Some(accept) = self.accept.clone() else {
            self.shared.reset_stream(&stream, RstStatus::REFUSED_STREAM);
            return Ok(());
        };
        if let Err(refused) = until_cancelled(&self.shared.cancel, accept.send(incoming)).await? {
            // The application dropped its receiver meanwhile.
            self.accept = None;
            self.shared
                .reset_stream(&refused.0.reader.stream, RstStatus::REFUSED_STREAM);
        }
        Ok(())
    }

    async fn on_data(&mut self, id: u32, flags: u8, data: Bytes) -> Result<(), SessionError> {
        let len = data.len();
        let fin = flags & FLAG_FIN != 0;
        let Some(stream) = self.stream(id) else {
            // Give the session window back for data we will never read.
            self.shared.credit(id, 0, len);
            let never_opened = {
                let st = lock(&self.shared.state);
                id.is_multiple_of(2) || id > st.last_client_stream
            };
            if never_opened {
                warn!(stream_id = id, "DATA for a stream that was never opened");
                self.send_rst(id, RstStatus::INVALID_STREAM).await?;
            } else {
                // Late frames for a stream that was reset or closed.
                trace!(stream_id = id, len, "DATA for closed stream dropped");
            }
            return Ok(());
        };

        let limit = self.shared.config.max_stream_buffer;
        let (mut wait, after_fin, discarded) = {
            let mut inner = lock(&stream.inner);
            if inner.remote_fin {
                (false, true, len)
            } else if inner.reader_dropped {
                inner.remote_fin |= fin;
                (false, false, len)
            } else {
                if len > 0 {
                    inner.buffered += len;
                    inner.recv.push_back(data);
                }
                inner.remote_fin |= fin;
                if let Some(w) = inner.read_waker.take() {
                    w.wake();
                }
                (inner.buffered > limit, false, 0)
            }
        };
        if discarded > 0 {
            let stream_credit = if after_fin { 0 } else { discarded as u32 };
            self.shared.credit(id, stream_credit, discarded);
        }
        if after_fin {
            warn!(stream_id = id, "DATA after FIN");
            self.shared
                .reset_stream(&stream, RstStatus::STREAM_ALREADY_CLOSED);
            return Ok(());
        }
        if fin {
            self.close_if_done(&stream);
        }

        // Backpressure: don't read more from the transport until the
        // application has drained this stream below the limit.
        while wait {
            trace!(
                stream_id = id,
                "stream buffer full; pausing transport reads"
            );
            until_cancelled(&self.shared.cancel, stream.space.notified()).await?;
            let inner = lock(&stream.inner);
            wait = inner.buffered > limit
                && !inner.reader_dropped
                && inner.reset.is_none()
                && !inner.session_closed;
        }
        Ok(())
    }

    fn remote_fin(&self, stream: &StreamShared) {
        {
            let mut inner = lock(&stream.inner);
            inner.remote_fin = true;
            if let Some(w) = inner.read_waker.take() {
                w.wake();
            }
        }
        self.close_if_done(stream);
    }

    fn close_if_done(&self, stream: &StreamShared) {
        let mut st = lock(&self.shared.state);
        if lock(&stream.inner).fully_closed() {
            self.shared.remove_stream(&mut st, stream.id);
        }
    }

    fn on_rst(&self, id: u32, status: RstStatus) {
        let mut st = lock(&self.shared.state);
        let Some(stream) = st.streams.get(&id).cloned() else {
            trace!(stream_id = id, %status, "RST_STREAM for unknown stream");
            return;
        };
        debug!(stream_id = id, %status, "stream reset by peer");
        let discarded = {
            let mut inner = lock(&stream.inner);
            inner.reset = Some(StreamReset {
                status,
                by_peer: true,
            });
            inner.wake_all();
            inner.discard()
        };
        st.recv_unacked = st.recv_unacked.saturating_add(discarded as u32);
        self.shared.remove_stream(&mut st, id);
        drop(st);
        stream.space.notify_one();
    }

    fn on_settings(&self, entries: &[Setting]) -> Result<(), SessionError> {
        for e in entries {
            if e.id != settings_id::INITIAL_WINDOW_SIZE {
                debug!(id = e.id, value = e.value, "ignoring setting");
                continue;
            }
            if i64::from(e.value) > MAX_WINDOW {
                return Err(SessionError::Protocol("initial window size above 2^31-1"));
            }
            let mut st = lock(&self.shared.state);
            let delta = i64::from(e.value) - st.peer_initial_window;
            debug!(
                value = e.value,
                "peer set initial window; enforcing flow control"
            );
            st.peer_initial_window = i64::from(e.value);
            st.peer_flow_control = true;
            // SPDY/3 2.6.8: a changed initial window adjusts every open
            // stream's window by the difference.
            for s in st.streams.values() {
                let mut inner = lock(&s.inner);
                inner.send_window += delta;
                if let Some(w) = inner.write_waker.take() {
                    w.wake();
                }
            }
            st.wake_send_waiters();
        }
        Ok(())
    }

    fn on_ping(&self, id: u32) {
        // Client pings are odd; an even id would answer a ping of ours,
        // and we send none.
        if id.is_multiple_of(2) {
            trace!(id, "ignoring PING reply");
            return;
        }
        let mut st = lock(&self.shared.state);
        if st.pending_pings.len() >= self.shared.config.max_pending_pings {
            warn!(id, "too many pending PINGs; dropping");
            return;
        }
        st.pending_pings.push_back(id);
        drop(st);
        self.shared.writer_wake.notify_one();
    }

    fn on_window_update(&self, id: u32, delta: u32) -> Result<(), SessionError> {
        let mut st = lock(&self.shared.state);
        if !st.peer_flow_control {
            debug!("peer sent WINDOW_UPDATE; enforcing flow control");
            st.peer_flow_control = true;
        }
        if id == 0 {
            st.send_window += i64::from(delta);
            if st.send_window > MAX_WINDOW {
                return Err(SessionError::Protocol("session window above 2^31-1"));
            }
            st.wake_send_waiters();
            return Ok(());
        }
        let Some(stream) = st.streams.get(&id).cloned() else {
            return Ok(());
        };
        let overflow = {
            let mut inner = lock(&stream.inner);
            inner.send_window += i64::from(delta);
            if let Some(w) = inner.write_waker.take() {
                w.wake();
            }
            inner.send_window > MAX_WINDOW
        };
        drop(st);
        if overflow {
            self.shared
                .reset_stream(&stream, RstStatus::FLOW_CONTROL_ERROR);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Streams

/// A stream opened by the client, already answered with SYN_REPLY.
///
/// Reading yields the client's DATA (EOF after its FIN; an error after a
/// reset or if the session dies first). Writing sends DATA frames;
/// `shutdown` sends an empty DATA frame with FLAG_FIN. Dropping the stream
/// (or its write half) without shutting down also sends FIN; dropping the
/// read half discards further incoming data.
#[derive(Debug)]
pub struct IncomingStream {
    /// Stream id (odd).
    pub id: u32,
    /// Headers from the SYN_STREAM (names lower case; one entry per value).
    pub headers: HeaderList,
    /// The SYN_STREAM carried FLAG_FIN: the client will send no data.
    pub fin: bool,
    /// The SYN_STREAM carried FLAG_UNIDIRECTIONAL: we may not send (writes
    /// fail, no SYN_REPLY was sent).
    pub unidirectional: bool,
    reader: StreamReader,
    writer: StreamWriter,
}

impl IncomingStream {
    /// First value of header `name` (give it in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Splits into independently owned read and write halves.
    pub fn into_split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }

    /// Aborts the stream with RST_STREAM(`status`).
    pub fn reset(&self, status: RstStatus) {
        self.reader.reset(status);
    }
}

impl AsyncRead for IncomingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for IncomingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

/// Read half of an [`IncomingStream`].
pub struct StreamReader {
    shared: Arc<Shared>,
    stream: Arc<StreamShared>,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("id", &self.stream.id)
            .finish()
    }
}

impl StreamReader {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.stream.id
    }

    /// Aborts the stream with RST_STREAM(`status`).
    pub fn reset(&self, status: RstStatus) {
        self.shared.reset_stream(&self.stream, status);
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let limit = this.shared.config.max_stream_buffer;
        let threshold = this.shared.config.credit_threshold();
        let (n, stream_credit, drained_below_limit) = {
            let mut inner = lock(&this.stream.inner);
            let Some(chunk) = inner.recv.front_mut() else {
                if let Some(r) = inner.reset {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, r)));
                }
                if inner.remote_fin {
                    return Poll::Ready(Ok(()));
                }
                if inner.session_closed {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "SPDY session closed before the stream finished",
                    )));
                }
                inner.read_waker = Some(cx.waker().clone());
                return Poll::Pending;
            };
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            chunk.advance(n);
            if chunk.is_empty() {
                inner.recv.pop_front();
            }
            let before = inner.buffered;
            inner.buffered -= n;
            // No point widening the window of a stream the peer finished.
            let credit = if inner.remote_fin {
                0
            } else {
                inner.recv_unacked += n as u32;
                if inner.recv_unacked >= threshold {
                    std::mem::take(&mut inner.recv_unacked)
                } else {
                    0
                }
            };
            (n, credit, before > limit && inner.buffered <= limit)
        };
        if drained_below_limit {
            this.stream.space.notify_one();
        }
        this.shared.credit(this.stream.id, stream_credit, n);
        Poll::Ready(Ok(()))
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        let (discarded, credit) = {
            let mut inner = lock(&self.stream.inner);
            inner.reader_dropped = true;
            let discarded = inner.discard();
            let credit = if inner.remote_fin || inner.reset.is_some() {
                0
            } else {
                discarded as u32 + std::mem::take(&mut inner.recv_unacked)
            };
            (discarded, credit)
        };
        self.stream.space.notify_one();
        if discarded > 0 || credit > 0 {
            self.shared.credit(self.stream.id, credit, discarded);
        }
    }
}

/// Write half of an [`IncomingStream`].
pub struct StreamWriter {
    shared: Arc<Shared>,
    stream: Arc<StreamShared>,
    slots: PollSemaphore,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("id", &self.stream.id)
            .finish()
    }
}

impl StreamWriter {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.stream.id
    }

    /// Aborts the stream with RST_STREAM(`status`).
    pub fn reset(&self, status: RstStatus) {
        self.shared.reset_stream(&self.stream, status);
    }

    /// Marks our side finished and queues the FIN (idempotent). Fails if
    /// the stream was reset or the session is gone.
    fn send_fin(&self) -> Result<(), io::Error> {
        let sh = &self.shared;
        let mut st = lock(&sh.state);
        let mut inner = lock(&self.stream.inner);
        if inner.local_fin && inner.reset.is_none() && !inner.session_closed {
            return Ok(());
        }
        if let Some(e) = inner.write_error() {
            return Err(e);
        }
        inner.local_fin = true;
        // FIN takes no queue slot: there is one per stream, and this must
        // work from `Drop`.
        sh.enqueue(
            CmdKind::Frame(Frame::Data {
                stream_id: self.stream.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            }),
            None,
        );
        let done = inner.fully_closed();
        drop(inner);
        if done {
            sh.remove_stream(&mut st, self.stream.id);
        }
        Ok(())
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Some(e) = lock(&this.stream.inner).write_error() {
            return Poll::Ready(Err(e));
        }
        // A queue slot first: this is the backpressure from a slow client.
        let Some(slot) = ready!(this.slots.poll_acquire(cx)) else {
            return Poll::Ready(Err(session_closed_error()));
        };

        let sh = &this.shared;
        let mut st = lock(&sh.state);
        let mut inner = lock(&this.stream.inner);
        if let Some(e) = inner.write_error() {
            return Poll::Ready(Err(e));
        }
        let mut n = buf.len().min(sh.config.max_data_frame);
        if st.peer_flow_control {
            let avail = inner.send_window.min(st.send_window);
            if avail <= 0 {
                trace!(stream_id = this.stream.id, "send window exhausted");
                inner.write_waker = Some(cx.waker().clone());
                if !st.send_waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    st.send_waiters.push(cx.waker().clone());
                }
                return Poll::Pending; // the slot is released
            }
            n = n.min(avail as usize);
        }
        // Windows are accounted even when not enforced (module docs).
        inner.send_window -= n as i64;
        st.send_window -= n as i64;
        let frame = Frame::Data {
            stream_id: this.stream.id,
            flags: 0,
            data: Bytes::copy_from_slice(&buf[..n]),
        };
        // Queued under the locks so a concurrent reset or FIN is ordered
        // after this DATA.
        if !sh.enqueue(CmdKind::Frame(frame), Some(slot)) {
            return Poll::Ready(Err(session_closed_error()));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames are handed to the writer task as soon as they are written;
        // there is nothing to flush at this level.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.send_fin())
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        // Like dropping a TCP write half: the peer sees end-of-stream.
        let _ = self.send_fin();
    }
}
