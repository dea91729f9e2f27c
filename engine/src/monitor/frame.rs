//! Length-prefixed protobuf frames on a byte stream (both ends of the monitor protocol).

use berth_proto::monitor::{Frame, MAX_FRAME};
use berth_proto::prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one frame; None at a clean end of stream.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("monitor frame of {n} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    Frame::decode(buf.as_slice())
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes one frame.
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
    let body = f.encode_to_vec();
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| (*n as usize) <= MAX_FRAME)
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "monitor frame too large")
        })?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    w.write_all(&out).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use berth_proto::monitor::{Hello, frame};

    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let f = Frame {
            id: 3,
            body: Some(frame::Body::Hello(Hello {
                protocol_version: 1,
                agent: "t".into(),
                pod_id: String::new(),
                pid: 1,
            })),
        };
        write(&mut a, &f).await.unwrap();
        drop(a);
        assert_eq!(read(&mut b).await.unwrap(), Some(f));
        assert_eq!(read(&mut b).await.unwrap(), None);
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = a.write_all(&u32::MAX.to_be_bytes()).await;
        });
        assert!(read(&mut b).await.is_err());
    }
}
