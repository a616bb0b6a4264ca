//! Framing for the node's small messages: a 4-byte big-endian length, then the postcard
//! encoding. Used by the control protocol (`/tailcache/control/1`, request-response) and for
//! the headers of the data protocol. The length is checked against the protocol's cap
//! before anything is allocated, so a peer claiming a 4 GiB message costs four bytes.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Serialize, de::DeserializeOwned};

use crate::tracker::{ControlRequest, ControlResponse};

/// Largest control request accepted or sent (an announce of ~1,900 files fits).
pub const MAX_CONTROL_REQUEST: usize = 64 * 1024;
/// Largest control response accepted or sent. Answers are bounded lists of peers, far below.
pub const MAX_CONTROL_RESPONSE: usize = 1024 * 1024;

/// The control protocol's name.
pub const CONTROL_PROTOCOL: StreamProtocol = StreamProtocol::new("/tailcache/control/1");

/// The error inside an [`io::Error`] when a frame exceeds its cap, so callers can tell
/// "too large" from other I/O failures.
#[derive(Debug, thiserror::Error)]
#[error("frame of {size} bytes exceeds the cap of {max} bytes")]
pub struct FrameTooLarge {
    pub size: u64,
    pub max: u64,
}

impl FrameTooLarge {
    /// The [`FrameTooLarge`] inside `e`, if that is what `e` is.
    pub fn find(e: &io::Error) -> Option<&FrameTooLarge> {
        e.get_ref()?.downcast_ref::<FrameTooLarge>()
    }
}

fn too_large(size: u64, max: usize, kind: io::ErrorKind) -> io::Error {
    io::Error::new(
        kind,
        FrameTooLarge {
            size,
            max: max as u64,
        },
    )
}

/// Writes one frame; refuses (without writing) a message larger than `max`.
pub async fn write_frame<W, T>(io: &mut W, msg: &T, max: usize) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body =
        postcard::to_stdvec(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if body.len() > max {
        return Err(too_large(
            body.len() as u64,
            max,
            io::ErrorKind::InvalidInput,
        ));
    }
    // Cannot overflow: max is far below u32::MAX for every caller, checked above.
    let len = u32::try_from(body.len())
        .map_err(|_| too_large(body.len() as u64, max, io::ErrorKind::InvalidInput))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&body).await?;
    io.flush().await
}

/// Reads one frame; a length above `max` is an error before any buffer is allocated.
pub async fn read_frame<R, T>(io: &mut R, max: usize) -> io::Result<T>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len as usize > max {
        return Err(too_large(u64::from(len), max, io::ErrorKind::InvalidData));
    }
    let mut body = vec![0u8; len as usize];
    io.read_exact(&mut body).await?;
    postcard::from_bytes(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The two methods of the control codec for one message type: it is read and written under
/// the same cap.
macro_rules! framed {
    ($read:ident, $write:ident, $msg:ty, $max:expr) => {
        async fn $read<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<$msg>
        where
            T: AsyncRead + Unpin + Send,
        {
            read_frame(io, $max).await
        }

        async fn $write<T>(&mut self, _: &StreamProtocol, io: &mut T, msg: $msg) -> io::Result<()>
        where
            T: AsyncWrite + Unpin + Send,
        {
            write_frame(io, &msg, $max).await
        }
    };
}

/// The request-response codec of the control protocol.
#[derive(Debug, Clone, Default)]
pub struct ControlCodec;

impl libp2p::request_response::Codec for ControlCodec {
    type Protocol = StreamProtocol;
    type Request = ControlRequest;
    type Response = ControlResponse;

    framed!(
        read_request,
        write_request,
        ControlRequest,
        MAX_CONTROL_REQUEST
    );
    framed!(
        read_response,
        write_response,
        ControlResponse,
        MAX_CONTROL_RESPONSE
    );
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// Claims a huge frame, then yields zeros forever: a reader that tried to read the body
    /// would never finish (and would have to allocate it first).
    struct EndlessClaim {
        header: [u8; 4],
        pos: usize,
        served: u64,
    }

    impl AsyncRead for EndlessClaim {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            while n < buf.len() && self.pos < 4 {
                buf[n] = self.header[self.pos];
                self.pos += 1;
                n += 1;
            }
            for b in &mut buf[n..] {
                *b = 0;
            }
            self.served += (buf.len() - n) as u64;
            Poll::Ready(Ok(buf.len()))
        }
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_after_reading_only_the_length() {
        let mut r = EndlessClaim {
            header: u32::MAX.to_be_bytes(),
            pos: 0,
            served: 0,
        };
        let res: io::Result<ControlRequest> = read_frame(&mut r, MAX_CONTROL_REQUEST).await;
        let e = res.unwrap_err();
        let tl = FrameTooLarge::find(&e).expect("a FrameTooLarge error");
        assert_eq!(tl.size, u64::from(u32::MAX));
        assert_eq!(tl.max, MAX_CONTROL_REQUEST as u64);
        assert_eq!(r.served, 0, "the body must not be read");
    }

    #[tokio::test]
    async fn oversized_message_is_not_written() {
        let req = ControlRequest::Withdraw {
            files: vec![crate::FileId::from_bytes([7u8; 32]); MAX_CONTROL_REQUEST / 32 + 1],
        };
        let mut out = Vec::new();
        let e = write_frame(&mut out, &req, MAX_CONTROL_REQUEST)
            .await
            .unwrap_err();
        assert!(FrameTooLarge::find(&e).is_some());
        assert!(out.is_empty());
    }

    fn who_has() -> ControlRequest {
        ControlRequest::WhoHas {
            file: crate::FileId::from_bytes([3u8; 32]),
        }
    }

    async fn framed(req: &ControlRequest) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, req, MAX_CONTROL_REQUEST)
            .await
            .unwrap();
        out
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let req = who_has();
        let out = framed(&req).await;
        assert_eq!(&out[..4], &((out.len() - 4) as u32).to_be_bytes());
        let back: ControlRequest = read_frame(&mut &out[..], MAX_CONTROL_REQUEST)
            .await
            .unwrap();
        assert_eq!(back, req);
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let mut out = framed(&who_has()).await;
        out.pop();
        let res: io::Result<ControlRequest> = read_frame(&mut &out[..], MAX_CONTROL_REQUEST).await;
        assert_eq!(res.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
