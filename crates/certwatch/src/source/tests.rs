//! Unit tests of `read_limited`: what is opened is checked, not what was looked at before.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(20);

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// Runs `f` on a thread; fails the test if it has not returned within [`PATIENCE`] (a read that
/// blocks for ever on a FIFO never returns).
fn within_patience<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("{what} did not return within {PATIENCE:?}"))
}

#[test]
fn a_fifo_without_a_writer_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.pem");
    mkfifo(&path);
    let err =
        within_patience("read_limited", move || read_limited(&path, DEFAULT_MAX_FILE_SIZE)).unwrap_err();
    assert!(matches!(err, Error::NotAFile { .. }), "{err:?}");
}

#[test]
fn a_fifo_with_a_writer_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.pem");
    mkfifo(&path);
    // O_RDWR opens a FIFO without waiting and counts as a writer that never writes.
    let _writer = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let err =
        within_patience("read_limited", move || read_limited(&path, DEFAULT_MAX_FILE_SIZE)).unwrap_err();
    assert!(matches!(err, Error::NotAFile { .. }), "{err:?}");
}

#[test]
fn a_huge_sparse_file_is_refused_from_its_size_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.pem");
    std::fs::File::create(&path).unwrap().set_len(2 << 30).unwrap();
    let err = read_limited(&path, DEFAULT_MAX_FILE_SIZE).unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: DEFAULT_MAX_FILE_SIZE, .. }), "{err:?}");
}

/// The type used to be checked on the path and the path opened afterwards: a FIFO renamed into
/// place between the two blocked the open (and with it every later reload) for ever. A swapper
/// thread alternates a FIFO (no writer) and a regular file at the path while the reads go on;
/// every read must return, with the content or a refusal.
#[test]
fn a_fifo_swapped_in_after_the_type_check_never_blocks_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.pem");
    std::fs::write(&path, "regular").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = std::thread::spawn({
        let (stop, dir, path) = (Arc::clone(&stop), dir.path().to_owned(), path.clone());
        move || {
            let (fifo, file) = (dir.join("fifo.tmp"), dir.join("file.tmp"));
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                mkfifo(&fifo);
                std::fs::rename(&fifo, &path).unwrap();
                std::fs::write(&file, "regular").unwrap();
                std::fs::rename(&file, &path).unwrap();
                swaps += 1;
            }
            swaps
        }
    });
    // Reads until each kind was met a thousand times, so the reads and the swaps interleave for
    // hundreds of rounds (before the fix, one read blocked within the first ones).
    let (fifos, files) = within_patience("reads racing the swaps", move || {
        let (mut fifos, mut files) = (0u32, 0u32);
        while fifos < 1000 || files < 1000 {
            match read_limited(&path, DEFAULT_MAX_FILE_SIZE) {
                Ok(content) => {
                    assert_eq!(content, b"regular");
                    files += 1;
                }
                Err(Error::NotAFile { .. }) => fifos += 1,
                // Renamed away between the lookup and the open.
                Err(Error::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(other) => panic!("unexpected error {other:?}"),
            }
        }
        (fifos, files)
    });
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 0 && fifos >= 1000 && files >= 1000, "{fifos} FIFOs, {files} files, {swaps} swaps");
}
