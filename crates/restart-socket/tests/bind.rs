//! Placing the socket file in a directory others can write to: nothing anybody puts there —
//! a file, a symlink or a directory at a predictable name, a symlink swapped in while the socket
//! is being placed — blocks the bind, redirects its `chmod`, or is removed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use restart_socket::{Server, ServerConfig};

/// A file outside the socket's directory whose mode a redirected `chmod` would change.
fn outside_file(dir: &Path) -> PathBuf {
    let path = dir.join("precious");
    std::fs::write(&path, "not yours").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// The names the socket was once bound under before being moved into place (`.rs<pid>.<n>`, a
/// per-process counter from 0), each taken beforehand by a file, a symlink to an outside file,
/// a dangling symlink or a directory: none may block the bind or be followed, and none is touched.
#[tokio::test]
async fn a_file_symlink_or_directory_at_a_predictable_name_neither_blocks_nor_redirects_the_bind() {
    let (shared, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let precious = outside_file(outside.path());
    let pid = std::process::id();
    let mut planted = Vec::new();
    for n in 0..1024u32 {
        let name = shared.path().join(format!(".rs{pid:x}.{n:x}"));
        match n % 4 {
            0 => std::fs::write(&name, "squatter").unwrap(),
            1 => std::os::unix::fs::symlink(&precious, &name).unwrap(),
            2 => std::os::unix::fs::symlink(outside.path().join("nothing"), &name).unwrap(),
            _ => std::fs::create_dir(&name).unwrap(),
        }
        planted.push(name);
    }
    for i in 0..3 {
        let path = shared.path().join(format!("control{i}.sock"));
        let server = Server::bind(&path, ServerConfig::default()).expect("bind despite the squatters");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
        assert_eq!(meta.mode() & 0o7777, 0o600);
        drop(server);
    }
    assert_eq!(mode(&precious), 0o644, "a chmod went through a planted symlink");
    assert!(!outside.path().join("nothing").exists(), "a dangling symlink was followed");
    for name in &planted {
        assert!(std::fs::symlink_metadata(name).is_ok(), "{} was removed", name.display());
    }
    // Only the squatters are left: no temporary file or directory of ours.
    let left = std::fs::read_dir(shared.path()).unwrap().count();
    assert_eq!(left, planted.len());
}

/// Another thread keeps replacing every new non-directory entry of the shared directory with a
/// symlink to an outside file (as another user could in a world-writable directory), while
/// sockets are bound there again and again: the outside file's mode never changes, and each bind
/// either succeeds with a 0600 socket at its path or fails with an error — never a panic.
#[tokio::test]
async fn a_symlink_swapped_in_while_binding_never_redirects_the_chmod() {
    let (shared, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let precious = outside_file(outside.path());
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = std::thread::spawn({
        let (stop, dir, precious) = (Arc::clone(&stop), shared.path().to_owned(), precious.clone());
        move || {
            let decoy = dir.join(".decoy");
            let mut swapped = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(entries) = std::fs::read_dir(&dir) else { continue };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                    if is_dir || name.to_string_lossy().starts_with("control") || name == ".decoy" {
                        continue;
                    }
                    let _ = std::os::unix::fs::symlink(&precious, &decoy);
                    if std::fs::rename(&decoy, entry.path()).is_ok() {
                        swapped += 1;
                    }
                }
            }
            swapped
        }
    });
    let mut bound = 0;
    for i in 0..300 {
        let path = shared.path().join(format!("control{i}.sock"));
        if let Ok(server) = Server::bind(&path, ServerConfig::default()) {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()), "{i}");
            assert_eq!(meta.mode() & 0o7777, 0o600, "{i}");
            bound += 1;
            drop(server);
        }
        assert_eq!(mode(&precious), 0o644, "bind {i}: a chmod went through a swapped-in symlink");
    }
    stop.store(true, Ordering::Relaxed);
    let swapped = attacker.join().unwrap();
    assert_eq!(mode(&precious), 0o644);
    assert!(bound > 0, "no bind succeeded ({swapped} swaps)");
}
