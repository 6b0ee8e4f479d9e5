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
/// [`SealedState::create`] writes the state frame (the one [`StateWriter::send`](crate::StateWriter::send) writes) into a new memfd and seals it
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

impl SealedState {
    /// Builds a frame of `len` payload bytes tagged with `version` in a new sealed memfd, the
    /// payload written in place by `fill` (no intermediate buffer: a state built straight into
    /// the memfd is copied once, by `fill`). The payload is the application's own bytes, read
    /// back with [`MappedState::payload`] (not postcard: [`MappedState::decode`] is for frames
    /// made by [`SealedState::create`]).
    ///
    /// ```
    /// use handover::SealedState;
    /// let fd = SealedState::build("cache", 1, 4096, |buf| buf.fill(7)).unwrap();
    /// let state = SealedState::map(&fd, 1 << 20).unwrap();
    /// assert_eq!((state.version(), state.payload().len()), (1, 4096));
    /// assert!(state.payload().iter().all(|b| *b == 7));
    /// ```
    pub fn build(
        name: &str,
        version: u32,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<OwnedFd, Error> {
        let announced = u32::try_from(len)
            .map_err(|_| Error::StateTooLarge { len: len as u64, limit: u32::MAX as usize })?;
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(|e| Error::Io { op: "create a memfd for the state", source: e.into() })?;
        let memfd = std::fs::File::from(fd);
        let total = HEADER_LEN + len;
        memfd.set_len(total as u64).map_err(Error::io("size the state memfd"))?;
        {
            let mut map =
                Mapping::new(memfd.as_fd(), total, true).map_err(Error::io("map the state memfd"))?;
            let bytes = map.bytes_mut();
            bytes[..4].copy_from_slice(&crate::state::STATE_MAGIC);
            bytes[4..8].copy_from_slice(&version.to_le_bytes());
            bytes[8..12].copy_from_slice(&announced.to_le_bytes());
            fill(&mut bytes[HEADER_LEN..]);
            // Unmapped here: F_SEAL_WRITE is refused while a writable shared mapping exists.
        }
        fcntl(&memfd, FcntlArg::F_ADD_SEALS(required_seals() | SealFlag::F_SEAL_SEAL))
            .map_err(|e| Error::Io { op: "seal the state memfd", source: e.into() })?;
        Ok(memfd.into())
    }

    /// Maps the state frame in `fd` — a sealed memfd, as for [`SealedState::read`] — read-only,
    /// without copying it: passing a state this way costs the same whatever its size (the pages
    /// are the predecessor's, shared), and only the pages the application touches are read.
    /// The magic, the version's presence, the size limit and the length are checked first.
    pub fn map(fd: &impl AsFd, limit: usize) -> Result<MappedState, Error> {
        let corrupt = |reason: String| Error::StateCorrupt { reason };
        let seals = fcntl(fd.as_fd(), FcntlArg::F_GET_SEALS)
            .map_err(|e| corrupt(format!("not a sealed memfd ({e})")))?;
        if !SealFlag::from_bits_truncate(seals).contains(required_seals()) {
            return Err(corrupt("the memfd is not sealed against writes".to_owned()));
        }
        let size = nix::sys::stat::fstat(fd.as_fd())
            .map_err(|e| Error::StateRead { source: e.into() })?
            .st_size as u64;
        if size < HEADER_LEN as u64 {
            return Err(corrupt(format!("{size} bytes: no complete header")));
        }
        let mut header = [0u8; HEADER_LEN];
        let n = nix::sys::uio::pread(fd.as_fd(), &mut header, 0)
            .map_err(|e| Error::StateRead { source: e.into() })?;
        if n != HEADER_LEN {
            return Err(corrupt(format!("{n} bytes: no complete header")));
        }
        let (version, len) = parse_header(&header, limit)?;
        if size != (HEADER_LEN + len) as u64 {
            return Err(corrupt(format!("{size} bytes for a frame of {}", HEADER_LEN + len)));
        }
        let map = Mapping::new(fd.as_fd(), HEADER_LEN + len, false)
            .map_err(|source| Error::StateRead { source })?;
        Ok(MappedState { version, map })
    }
}

/// A state frame mapped from a sealed memfd ([`SealedState::map`]): its payload is read in place.
#[derive(Debug)]
pub struct MappedState {
    version: u32,
    map: Mapping,
}

impl MappedState {
    /// The version tag the old process wrote.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The payload, in place (the memfd is sealed: these bytes cannot change).
    pub fn payload(&self) -> &[u8] {
        &self.map.bytes()[HEADER_LEN..]
    }

    /// Decodes the payload of a frame made by [`SealedState::create`] as `T` (which may borrow
    /// from the mapping: `&[u8]`, `&str` fields are not copied) if the version is `expected`.
    pub fn decode<'a, T: serde::Deserialize<'a>>(&'a self, expected: u32) -> Result<T, Error> {
        if self.version != expected {
            return Err(Error::StateVersion { found: self.version, expected });
        }
        let (value, rest) = postcard::take_from_bytes::<T>(self.payload())
            .map_err(|e| Error::StateCorrupt { reason: format!("cannot decode version {expected}: {e}") })?;
        if !rest.is_empty() {
            return Err(Error::StateCorrupt {
                reason: format!("{} trailing bytes after the payload", rest.len()),
            });
        }
        Ok(value)
    }
}

/// A shared mapping of the first `len` bytes of a file, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing in it is tied to a thread.
unsafe impl Send for Mapping {}
// SAFETY: shared access only reads (`bytes`); `bytes_mut` needs `&mut self`.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: std::os::fd::BorrowedFd<'_>, len: usize, writable: bool) -> std::io::Result<Mapping> {
        use std::os::fd::AsRawFd as _;
        if len == 0 {
            return Ok(Mapping { ptr: std::ptr::NonNull::dangling().as_ptr(), len: 0 });
        }
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a new mapping of `len` bytes of an open file at offset 0, placed by the kernel;
        // the result is checked before use.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives. A read-only mapping
        // is only ever made of a memfd sealed against writes, growing and shrinking
        // (`SealedState::map` checks), so the bytes cannot change under the reference and no page
        // can vanish (no SIGBUS).
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: a writable mapping of a memfd only this process can reach yet (`build`, before
        // the fd is returned); `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: unmaps exactly the mapping this value made; no reference into it outlives
            // `self` (they borrow from it).
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_state_is_read_in_place_and_refused_like_a_read_one() {
        let fd = SealedState::create("t", 4, &(7u64, "seven"), 1024).unwrap();
        let mapped = SealedState::map(&fd, 1024).unwrap();
        let (n, s): (u64, &str) = mapped.decode(4).unwrap();
        assert_eq!((n, s), (7, "seven"));
        assert!(matches!(
            mapped.decode::<(u64, &str)>(5),
            Err(Error::StateVersion { found: 4, expected: 5 })
        ));
        // Over the limit, unsealed, torn: the same refusals as `read`.
        assert!(matches!(SealedState::map(&fd, 4), Err(Error::StateTooLarge { .. })));
        let file = tempfile::tempfile().unwrap();
        assert!(SealedState::map(&file, 1024).unwrap_err().to_string().contains("not a sealed memfd"));
        let empty = SealedState::build("empty", 2, 0, |_| {}).unwrap();
        let mapped = SealedState::map(&empty, 1024).unwrap();
        assert_eq!((mapped.version(), mapped.payload()), (2, &[][..]));
    }

    #[test]
    fn a_built_state_cannot_be_changed_once_passed() {
        let fd = SealedState::build("big", 9, 1 << 20, |buf| {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = i as u8;
            }
        })
        .unwrap();
        let mut file = std::fs::File::from(fd.try_clone().unwrap());
        assert!(file.write_all(b"x").is_err(), "a sealed memfd accepted a write");
        assert!(file.set_len(0).is_err(), "a sealed memfd was truncated");
        let mapped = SealedState::map(&fd, 2 << 20).unwrap();
        assert!(mapped.payload().iter().enumerate().all(|(i, b)| *b == i as u8));
        // The same frame read by copy.
        assert_eq!(SealedState::read(&fd, 2 << 20).unwrap().payload, mapped.payload());
    }

    proptest::proptest! {
        /// Whatever bytes a sealed memfd holds, mapping it gives a typed error or exactly the
        /// frame those bytes are.
        #[test]
        fn any_sealed_bytes_map_to_a_typed_error_or_their_frame(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            valid_header in proptest::prelude::any::<bool>(),
        ) {
            let raw = memfd_create("p", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
            let mut file = std::fs::File::from(raw);
            let mut content = Vec::new();
            if valid_header {
                content.extend_from_slice(&crate::state::STATE_MAGIC);
                content.extend_from_slice(&1u32.to_le_bytes());
                content.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            }
            content.extend_from_slice(&bytes);
            file.write_all(&content).unwrap();
            fcntl(&file, FcntlArg::F_ADD_SEALS(required_seals())).unwrap();
            match SealedState::map(&file, 32) {
                Ok(mapped) => {
                    proptest::prop_assert!(content.len() >= HEADER_LEN);
                    proptest::prop_assert_eq!(mapped.payload(), &content[HEADER_LEN..]);
                    proptest::prop_assert!(mapped.payload().len() <= 32);
                }
                Err(Error::StateCorrupt { .. } | Error::StateTooLarge { .. }) => {}
                Err(other) => proptest::prop_assert!(false, "unexpected error {other}"),
            }
        }
    }
}

#[cfg(test)]
mod read_tests {
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
