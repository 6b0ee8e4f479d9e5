//! Tests of snapshots: files written and read back, which files are trusted, and properties:
//! any bytes or JSON from a state file give a typed error or a snapshot that round-trips.

use std::os::unix::fs::PermissionsExt as _;

use proptest::prelude::*;

use super::*;

#[test]
fn round_trips_through_json_and_refuses_other_versions() {
    let snap = Snapshot::of_process(std::process::id(), Command::new("me").arg("x")).expect("snapshot");
    let back = Snapshot::from_json(&snap.to_json()).expect("parse");
    assert_eq!(back, snap);
    let newer = snap.to_json().replace("\"version\":2", "\"version\":3");
    assert!(matches!(Snapshot::from_json(&newer), Err(Error::Snapshot { .. })));
    assert!(matches!(Snapshot::from_json("{not json"), Err(Error::Snapshot { .. })));
}

#[test]
fn writes_and_reads_a_file_atomically_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("svc.state");
    let missing = Snapshot::read(&path);
    assert!(
        matches!(&missing, Err(Error::ReadSnapshot { source, .. }) if source.kind() == std::io::ErrorKind::NotFound),
        "{missing:?}"
    );
    let snap = Snapshot::of_process(std::process::id(), Command::new("me")).expect("snapshot");
    snap.write(&path).expect("write");
    assert_eq!(Snapshot::read(&path).expect("read"), snap);
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1, "no temporary file is left");
    std::fs::write(&path, "garbage").expect("write garbage");
    let err = Snapshot::read(&path).expect_err("garbage is refused");
    assert!(err.to_string().contains("svc.state"), "the error names the file: {err}");
    let in_missing_dir = snap.write(&dir.path().join("missing/svc.state"));
    assert!(matches!(in_missing_dir, Err(Error::StateFile { .. })), "{in_missing_dir:?}");
}

fn write_mode(path: &Path, content: &[u8], mode: u32) {
    std::fs::write(path, content).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn files_others_could_have_written_are_refused_before_they_are_parsed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = Snapshot::of_process(std::process::id(), Command::new("me")).expect("snapshot");
    let path = dir.path().join("svc.state");
    for mode in [0o620, 0o602, 0o622, 0o666, 0o777] {
        write_mode(&path, snap.to_json().as_bytes(), mode);
        match Snapshot::read(&path) {
            Err(Error::UntrustedFile { path: p, reason }) => {
                assert_eq!(p, path);
                assert_eq!(reason, format!("writable by group or others (mode {mode:04o})"));
            }
            other => panic!("mode {mode:o}: {other:?}"),
        }
    }
    for mode in [0o600, 0o640, 0o644, 0o400] {
        write_mode(&path, snap.to_json().as_bytes(), mode);
        assert_eq!(Snapshot::read(&path).expect("trusted"), snap, "mode {mode:o}");
    }
    let link = dir.path().join("link.state");
    std::os::unix::fs::symlink(&path, &link).expect("symlink");
    assert!(
        matches!(Snapshot::read(&link), Err(Error::UntrustedFile { reason, .. }) if reason == "it is a symbolic link")
    );
    let fifo = dir.path().join("fifo.state");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // Refused without blocking on the open (no writer ever comes).
    assert!(
        matches!(Snapshot::read(&fifo), Err(Error::UntrustedFile { reason, .. }) if reason == "not a regular file")
    );
    let big = dir.path().join("big.state");
    write_mode(&big, &vec![b' '; (MAX_FILE + 1) as usize], 0o600);
    assert!(
        matches!(Snapshot::read(&big), Err(Error::Snapshot { reason }) if reason.contains("larger than"))
    );
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[ -~]{0,12}"]
}

fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
    let command = (
        arb_text(),
        proptest::collection::vec(arb_text(), 0..4),
        proptest::collection::vec((arb_text(), arb_text()), 0..3),
        proptest::collection::vec(arb_text(), 0..3),
        any::<bool>(),
        proptest::option::of(arb_text()),
    )
        .prop_map(|(program, args, env, env_remove, env_clear, cwd)| Command {
            program,
            args,
            env,
            env_remove,
            env_clear,
            cwd: cwd.map(std::path::PathBuf::from),
        });
    (
        (any::<u32>(), any::<u32>(), any::<u64>(), arb_text(), any::<u32>(), any::<u64>()),
        command,
        (
            any::<bool>(),
            proptest::option::of(arb_text()),
            proptest::option::of(arb_text()),
            proptest::option::of(arb_text()),
        ),
    )
        .prop_map(
            |(
                (pid, pgid, start_time, boot_id, uid, since_unix_ms),
                command,
                (ready, status_text, notify_socket, pid_file),
            )| {
                Snapshot {
                    version: SNAPSHOT_VERSION,
                    pid,
                    pgid,
                    start_time,
                    boot_id,
                    uid,
                    since_unix_ms,
                    command,
                    ready,
                    status_text,
                    notify_socket,
                    pid_file: pid_file.map(std::path::PathBuf::from),
                }
            },
        )
}

/// JSON objects shaped like a snapshot, with every field possibly missing, of the wrong type, or
/// out of range: what a stale, truncated or tampered state file holds.
fn arb_json() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        arb_text().prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(arb_text(), inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let fields = [
        "version",
        "pid",
        "pgid",
        "start_time",
        "boot_id",
        "uid",
        "since_unix_ms",
        "command",
        "ready",
        "status_text",
        "notify_socket",
        "pid_file",
    ];
    (arb_snapshot(), proptest::collection::vec((0..fields.len(), proptest::option::of(value)), 0..6))
        .prop_map(move |(snapshot, edits)| {
            let mut object: serde_json::Value = serde_json::from_str(&snapshot.to_json()).expect("own json");
            for (field, value) in edits {
                let map = object.as_object_mut().expect("an object");
                match value {
                    Some(value) => map.insert(fields[field].to_owned(), value),
                    None => map.remove(fields[field]),
                };
            }
            object.to_string()
        })
}

proptest! {
    #[test]
    fn any_snapshot_round_trips_through_json_and_a_file(snapshot in arb_snapshot()) {
        prop_assert_eq!(&Snapshot::from_json(&snapshot.to_json()).expect("own json"), &snapshot);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("svc.state");
        snapshot.write(&path).expect("write");
        prop_assert_eq!(Snapshot::read(&path).expect("read"), snapshot);
    }

    #[test]
    fn any_bytes_in_a_state_file_give_a_typed_error_or_a_snapshot_that_round_trips(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            arb_json().prop_map(String::into_bytes),
        ],
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("svc.state");
        write_mode(&path, &bytes, 0o600);
        match Snapshot::read(&path) {
            Ok(snapshot) => {
                prop_assert_eq!(snapshot.version, SNAPSHOT_VERSION);
                prop_assert_eq!(Snapshot::from_json(&snapshot.to_json()).expect("round trip"), snapshot);
            }
            Err(Error::Snapshot { reason }) => prop_assert!(reason.contains("svc.state"), "{}", reason),
            // Not UTF-8.
            Err(Error::ReadSnapshot { source, .. }) => prop_assert_eq!(source.kind(), std::io::ErrorKind::InvalidData),
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
    }
}
