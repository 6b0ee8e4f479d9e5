//! The state frame: a version-tagged, length-limited postcard payload, and its async reader/writer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::Error;

/// The first bytes of every state frame.
pub(crate) const STATE_MAGIC: [u8; 4] = *b"LLst";
/// Magic (4 bytes), version (`u32` LE), payload length (`u32` LE).
pub(crate) const HEADER_LEN: usize = 12;
/// Default limit on a state payload: checked against the announced length before allocating.
pub const DEFAULT_STATE_LIMIT: usize = 16 << 20;

/// One state frame as read from the predecessor, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFrame {
    /// The version tag the old process wrote.
    pub version: u32,
    /// The postcard payload.
    pub payload: Vec<u8>,
}

impl StateFrame {
    /// Decodes the payload as `T` if the frame's version is `expected`.
    ///
    /// A reader that understands several versions matches on [`StateFrame::version`] first and
    /// calls this with the version it found.
    pub fn decode<T: DeserializeOwned>(&self, expected: u32) -> Result<T, Error> {
        self.decode_borrowed(expected)
    }

    /// [`StateFrame::decode`] for a `T` that borrows from the payload (`&[u8]`, `&str` fields):
    /// a large blob in the state is then not copied out of the buffer it was read into.
    pub fn decode_borrowed<'a, T: serde::Deserialize<'a>>(&'a self, expected: u32) -> Result<T, Error> {
        if self.version != expected {
            return Err(Error::StateVersion { found: self.version, expected });
        }
        let (value, rest) = postcard::take_from_bytes::<T>(&self.payload)
            .map_err(|e| Error::StateCorrupt { reason: format!("cannot decode version {expected}: {e}") })?;
        if !rest.is_empty() {
            return Err(Error::StateCorrupt {
                reason: format!("{} trailing bytes after the payload", rest.len()),
            });
        }
        Ok(value)
    }
}

/// Encodes `value` as one state frame tagged with `version` (round trips and version refusals:
/// `state/tests.rs`).
pub(crate) fn encode_frame<T: Serialize + ?Sized>(
    version: u32,
    value: &T,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    let encode_err = |e: postcard::Error| Error::StateCorrupt { reason: format!("cannot encode: {e}") };
    // Sized first (no memory traffic), then encoded once into a buffer of exactly that size: a
    // large state is copied once, not once per doubling of a growing buffer.
    let len = postcard::serialize_with_flavor::<T, postcard::ser_flavors::Size, usize>(
        value,
        postcard::ser_flavors::Size::default(),
    )
    .map_err(encode_err)?;
    let header = header(version, len, limit)?;
    let mut frame = Vec::with_capacity(HEADER_LEN + len);
    frame.extend_from_slice(&header);
    let frame = postcard::to_io(value, frame).map_err(encode_err)?;
    if frame.len() != HEADER_LEN + len {
        return Err(Error::StateCorrupt {
            reason: format!("encoded {} bytes, sized {len}", frame.len() - HEADER_LEN),
        });
    }
    Ok(frame)
}

/// The header of a frame of `len` payload bytes, if `len` is within `limit` (and a `u32`).
fn header(version: u32, len: usize, limit: usize) -> Result<[u8; HEADER_LEN], Error> {
    let announced = u32::try_from(len).ok().filter(|_| len <= limit);
    let Some(announced) = announced else { return Err(Error::StateTooLarge { len: len as u64, limit }) };
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&STATE_MAGIC);
    header[4..8].copy_from_slice(&version.to_le_bytes());
    header[8..].copy_from_slice(&announced.to_le_bytes());
    Ok(header)
}

/// Checks a frame header; returns the version and the payload length (at most `limit`).
pub(crate) fn parse_header(header: &[u8; HEADER_LEN], limit: usize) -> Result<(u32, usize), Error> {
    if header[..4] != STATE_MAGIC {
        return Err(Error::StateCorrupt { reason: "not a lifeline state frame (bad magic)".to_owned() });
    }
    let version = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if len as usize > limit {
        return Err(Error::StateTooLarge { len: u64::from(len), limit });
    }
    Ok((version, len as usize))
}

/// Reads one frame. `Ok(None)` when the stream ends before its first byte: the old process
/// sent no state.
pub(crate) async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<StateFrame>, Error> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = reader.read(&mut header[filled..]).await.map_err(|source| Error::StateRead { source })?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(Error::StateCorrupt {
                reason: format!("truncated header ({filled} of {HEADER_LEN} bytes)"),
            });
        }
        filled += n;
    }
    let (version, len) = parse_header(&header, limit)?;
    let mut payload = vec![0u8; len];
    match reader.read_exact(&mut payload).await {
        Ok(_) => Ok(Some(StateFrame { version, payload })),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(Error::StateCorrupt { reason: format!("truncated payload (expected {len} bytes)") })
        }
        Err(source) => Err(Error::StateRead { source }),
    }
}

/// The old process's end of the state channel, given to
/// [`LifecycleHandler::send_state`](crate::LifecycleHandler::send_state).
///
/// [`StateWriter::send`] writes one version-tagged postcard frame (what [`StateReader::recv`]
/// reads). It is also an [`AsyncWrite`] for applications with their own format.
pub struct StateWriter {
    inner: Pin<Box<dyn AsyncWrite + Send>>,
    limit: usize,
}

impl std::fmt::Debug for StateWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateWriter").field("limit", &self.limit).finish_non_exhaustive()
    }
}

impl StateWriter {
    pub(crate) fn new(inner: impl AsyncWrite + Send + 'static, limit: usize) -> Self {
        StateWriter { inner: Box::pin(inner), limit }
    }

    /// A writer over any byte stream: for the `bench-handover` benchmark, which measures the
    /// frame format over a bare pipe. Not part of the API (no semver promise).
    #[doc(hidden)]
    pub fn over(inner: impl AsyncWrite + Send + 'static, limit: usize) -> Self {
        StateWriter::new(inner, limit)
    }

    /// Encodes `value` as a frame tagged with `version` and writes it.
    pub async fn send<T: Serialize + ?Sized>(&mut self, version: u32, value: &T) -> io::Result<()> {
        let frame = encode_frame(version, value, self.limit)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.inner.write_all(&frame).await?;
        self.inner.flush().await
    }

    /// Writes `payload` as the payload of a frame tagged with `version`, as it is (no postcard
    /// encoding, no copy: the header, then the bytes); the new process reads it with
    /// [`StateReader::recv_frame`] and finds it in [`StateFrame::payload`]. For a large state
    /// that is already bytes — through the pipe, the same bytes as a bare pipe carries.
    pub async fn send_raw(&mut self, version: u32, payload: &[u8]) -> io::Result<()> {
        let header = header(version, payload.len(), self.limit)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.inner.write_all(&header).await?;
        self.inner.write_all(payload).await?;
        self.inner.flush().await
    }
}

impl AsyncWrite for StateWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.inner.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

/// The new process's end of the state channel ([`Handover::state_reader`](crate::Handover::state_reader)).
///
/// [`StateReader::recv`] reads the frame [`StateWriter::send`] wrote; it is also an [`AsyncRead`].
pub struct StateReader {
    inner: Pin<Box<dyn AsyncRead + Send>>,
    limit: usize,
}

impl std::fmt::Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReader").field("limit", &self.limit).finish_non_exhaustive()
    }
}

impl StateReader {
    pub(crate) fn new(inner: impl AsyncRead + Send + 'static, limit: usize) -> Self {
        StateReader { inner: Box::pin(inner), limit }
    }

    /// A reader over any byte stream: for the `bench-handover` benchmark (see
    /// [`StateWriter::over`]). Not part of the API (no semver promise).
    #[doc(hidden)]
    pub fn over(inner: impl AsyncRead + Send + 'static, limit: usize) -> Self {
        StateReader::new(inner, limit)
    }

    /// Reads one frame without decoding it; `None` when the old process sent nothing.
    pub async fn recv_frame(&mut self) -> Result<Option<StateFrame>, Error> {
        read_frame(&mut self.inner, self.limit).await
    }

    /// Reads one frame and decodes it as `T`, which must carry `version`; `None` when the old
    /// process sent nothing.
    pub async fn recv<T: DeserializeOwned>(&mut self, version: u32) -> Result<Option<T>, Error> {
        match self.recv_frame().await? {
            Some(frame) => frame.decode(version).map(Some),
            None => Ok(None),
        }
    }
}

impl AsyncRead for StateReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests;
