//! A small SPDY/3.1 implementation: framing ([`frame`]), header block
//! compression ([`headers`]) and an async server session ([`session`]),
//! written to serve kubelet-style `exec` / `attach` / `port-forward`
//! streams to moby/spdystream clients (kubectl) after an HTTP/1.1 Upgrade.
//!
//! Only the server side of a session is implemented: the client opens
//! streams, we reply. See the [`session`] docs for the compatibility
//! decisions (automatic SYN_REPLY, lenient flow control).
//!
//! ```no_run
//! use spdy::{RstStatus, Session};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn serve(upgraded: tokio::net::TcpStream) -> std::io::Result<()> {
//! let (session, mut streams) = Session::server(upgraded);
//! while let Some(mut stream) = streams.recv().await {
//!     match stream.header("streamtype") {
//!         Some("stdout") => {
//!             stream.write_all(b"hello\n").await?;
//!             stream.shutdown().await?; // DATA with FLAG_FIN
//!         }
//!         Some("stdin") => {
//!             let mut input = Vec::new();
//!             stream.read_to_end(&mut input).await?;
//!         }
//!         _ => stream.reset(RstStatus::REFUSED_STREAM),
//!     }
//! }
//! session.closed().await;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod frame;
pub mod headers;
pub mod session;

pub use frame::{Frame, FrameDecoder, FrameError, GoAwayStatus, RstStatus};
pub use headers::{HeaderCompressor, HeaderDecompressor, HeaderError, HeaderList};
pub use session::{
    IncomingStream, Session, SessionConfig, SessionError, SessionHandle, StreamReader, StreamReset,
    StreamWriter,
};
