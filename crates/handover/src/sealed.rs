//! State in a sealed memfd: bytes that cannot change once written, passed as one file descriptor
//! (to a successor, or to systemd's fd store across `systemctl restart`).

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::Error;
use crate::state::{HEADER_LEN, StateFrame, encode_frame, parse_header};

/// The seals a reader requires: nobody can write, grow or shrink the file any more.
fn required_seals() -> SealFlag {
    SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK
}

/// A state frame in a sealed memfd.
///
/// [`SealedState::create`] writes the frame [`encode_frame`] makes into a new memfd and seals it
/// (`F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL`); [`SealedState::read`] accepts a
/// file descriptor only if it carries those seals — so the bytes it reads are the bytes that were
/// written, whoever else holds the descriptor — and checks the frame's magic, version and size
/// limit before allocating.
///
/// ```
/// use handover::SealedState;
/// let fd = SealedState::create("counters", 7, &(41u64, "x"), 1 << 20).unwrap();
/// let frame = SealedState::read(&fd, 1 << 20).unwrap();
/// assert_eq!(frame.decode::<(u64, String)>(7).unwrap(), (41, "x".to_owned()));
/// ```
#[derive(Debug)]
pub struct SealedState;

impl SealedState {
    /// Encodes `value` as a frame tagged with `version` into a new sealed memfd named `name`
    /// (shown in `/proc/<pid>/fd`); `limit` bounds the payload as for a piped state.
    pub fn create<T: serde::Serialize + ?Sized>(
        name: &str,
        version: u32,
        value: &T,
        limit: usize,
    ) -> Result<OwnedFd, Error> {
        let frame = encode_frame(version, value, limit)?;
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(|e| Error::Io { op: "create a memfd for the state", source: e.into() })?;
        let mut file = std::fs::File::from(fd);
        file.write_all(&frame).map_err(Error::io("write the state into a memfd"))?;
        fcntl(&file, FcntlArg::F_ADD_SEALS(required_seals() | SealFlag::F_SEAL_SEAL))
            .map_err(|e| Error::Io { op: "seal the state memfd", source: e.into() })?;
        Ok(file.into())
    }

    /// Reads the state frame in `fd`, which must be a sealed memfd ([`Error::StateCorrupt`]
    /// otherwise: an unsealed file could change while it is read, so it is never trusted).
    pub fn read(fd: &impl AsFd, limit: usize) -> Result<StateFrame, Error> {
        let corrupt = |reason: String| Error::StateCorrupt { reason };
        let seals = fcntl(fd.as_fd(), FcntlArg::F_GET_SEALS)
            .map_err(|e| corrupt(format!("not a sealed memfd ({e})")))?;
        if !SealFlag::from_bits_truncate(seals).contains(required_seals()) {
            return Err(corrupt("the memfd is not sealed against writes".to_owned()));
        }
        let mut file = std::fs::File::from(
            fd.as_fd().try_clone_to_owned().map_err(Error::io("duplicate the state memfd"))?,
        );
        let size = file.metadata().map_err(|source| Error::StateRead { source })?.len();
        let mut header = [0u8; HEADER_LEN];
        file.seek(SeekFrom::Start(0)).map_err(|source| Error::StateRead { source })?;
        file.read_exact(&mut header).map_err(|_| corrupt(format!("{size} bytes: no complete header")))?;
        let (version, len) = parse_header(&header, limit)?;
        if size != (HEADER_LEN + len) as u64 {
            return Err(corrupt(format!("{size} bytes for a frame of {}", HEADER_LEN + len)));
        }
        let mut payload = vec![0u8; len];
        file.read_exact(&mut payload).map_err(|source| Error::StateRead { source })?;
        Ok(StateFrame { version, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_state_round_trips_and_cannot_be_changed() {
        let fd = SealedState::create("test", 3, &vec![1u8, 2, 3], 1024).unwrap();
        let mut file = std::fs::File::from(fd.try_clone().unwrap());
        assert!(file.write_all(b"x").is_err(), "a sealed memfd accepted a write");
        assert!(file.set_len(0).is_err(), "a sealed memfd was truncated");
        let frame = SealedState::read(&fd, 1024).unwrap();
        assert_eq!(frame.decode::<Vec<u8>>(3).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn unsealed_files_oversized_and_torn_frames_are_refused() {
        // An ordinary file (or an unsealed memfd) could change under the reader.
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&encode_frame(1, &5u32, 1024).unwrap()).unwrap();
        let err = SealedState::read(&file, 1024).unwrap_err();
        assert!(err.to_string().contains("not a sealed memfd"), "{err}");
        // Over the limit: refused from the header, before allocating.
        let fd = SealedState::create("big", 1, &vec![0u8; 4096], 1 << 20).unwrap();
        assert!(matches!(SealedState::read(&fd, 1024), Err(Error::StateTooLarge { .. })));
        // A sealed memfd whose length does not match its header.
        let raw = memfd_create("torn", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        let mut torn = std::fs::File::from(raw);
        let frame = encode_frame(1, &vec![7u8; 64], 1024).unwrap();
        torn.write_all(&frame[..frame.len() - 1]).unwrap();
        fcntl(&torn, FcntlArg::F_ADD_SEALS(required_seals())).unwrap();
        let err = SealedState::read(&torn, 1024).unwrap_err();
        assert!(err.to_string().contains("bytes for a frame of"), "{err}");
    }
}
