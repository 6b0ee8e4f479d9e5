//! The server under systemd's protocols: a listening socket from `systemd-socket-activate`, and
//! `READY=1` / `MAINPID=` on a `NOTIFY_SOCKET` the test binds.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};

use lifeline_tests::{PATIENCE, https_server_bin};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{Conn, Lines, Options, Server};

/// A port that was free a moment ago (bind port 0, close).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `systemd-socket-activate -l 127.0.0.1:PORT https-server ... --listen 127.0.0.1:1`, retried with
/// another port when the one picked was taken in between. Returns the wrapper (which becomes
/// the server on the first connection), its output and the port.
fn socket_activate(options: &Options) -> (Child, Lines, Lines, u16) {
    for _ in 0..10 {
        let port = free_port();
        let mut cmd = Command::new("systemd-socket-activate");
        cmd.arg("-l").arg(format!("127.0.0.1:{port}")).arg(https_server_bin());
        cmd.args(options.server_args("127.0.0.1:1"));
        options.environment(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("systemd-socket-activate must be installed (systemd package)");
        let stdout = Lines::new(child.stdout.take().unwrap());
        let stderr = Lines::new(child.stderr.take().unwrap());
        let first = stderr.wait("");
        if first == format!("Listening on 127.0.0.1:{port} as 3.") {
            return (child, stdout, stderr, port);
        }
        // Most likely "Address already in use": somebody took the port in between.
        assert!(first.contains("Address already in use"), "systemd-socket-activate: {first}");
        let _ = child.wait();
    }
    panic!("systemd-socket-activate could not listen on a free port in 10 tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_the_socket_from_systemd_socket_activate_and_hands_it_over() {
    let options = Options::new();
    let roots = options.pki().roots();
    let (child, stdout, stderr, port) = socket_activate(&options);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // The first connection makes systemd-socket-activate exec the server (same pid), which
    // finds the listening socket as fd 3 and ignores `--listen`.
    let first_request = tokio::spawn(async move { Conn::open(addr, &roots).await?.get("/").await });
    let mut server = Server::from_parts(options, child, stdout, stderr);
    assert_eq!(server.addr, addr, "the server did not adopt the activated socket");
    assert_eq!(first_request.await.unwrap().unwrap(), format!("pid={} generation=1 served=1", server.pid));

    let load = server.load(2, true);
    load.wait_for_more(10).await;
    let new_pid = server.restart().unwrap();
    assert_eq!(server.answer().await.0, new_pid);
    load.wait_for_more(10).await;
    let samples = load.stop().await;
    let failed: Vec<_> = samples.iter().filter_map(|s| s.outcome.as_ref().err()).collect();
    assert!(failed.is_empty(), "failed requests: {failed:#?}");

    // The successor got the socket from its predecessor, not from systemd's variables.
    let environ = std::fs::read(format!("/proc/{new_pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.split('\0').any(|v| v.starts_with("LISTEN_FDS=")), "{environ}");
    assert!(environ.split('\0').any(|v| v.starts_with("LIFELINE_FDS=")), "{environ}");
}

/// The next datagram on the fake notify socket that is not only a `STATUS=` refresh.
fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let len = socket.recv(&mut buf).expect("a notification within PATIENCE");
        let msg = String::from_utf8_lossy(&buf[..len]).into_owned();
        if !msg.lines().all(|l| l.starts_with("STATUS=")) {
            return msg;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_gets_ready_then_the_main_pid_of_each_new_process() {
    let options = Options::new();
    let notify_path = options.dir().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut server = options.env("NOTIFY_SOCKET", &notify_path).start();
    assert_eq!(recv(&notify), "READY=1\n");

    for _ in 0..3 {
        let new_pid = server.restart().unwrap();
        // From the old process, still the main one: the reload, then the new main pid, ready.
        // The new one sends no READY=1 of its own.
        assert!(recv(&notify).starts_with("RELOADING=1\nMONOTONIC_USEC="));
        assert_eq!(recv(&notify), format!("MAINPID={new_pid}\nREADY=1\n"));
        assert_eq!(server.answer().await.0, new_pid);
    }
    // A stop: STOPPING=1 (with the status), then more time for the drain.
    kill(Pid::from_raw(server.pid as i32), Signal::SIGTERM).unwrap();
    let stopping = recv(&notify);
    assert!(
        stopping.starts_with("STOPPING=1\nSTATUS=stopping (stopped by signal SIGTERM): generation 4"),
        "{stopping:?}"
    );
    assert!(recv(&notify).starts_with("EXTEND_TIMEOUT_USEC="));
    // Nothing else was sent (status refreshes aside).
    notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let extra = std::iter::from_fn(|| {
        notify.recv(&mut buf).ok().map(|len| String::from_utf8_lossy(&buf[..len]).into_owned())
    })
    .find(|msg| !msg.starts_with("STATUS="));
    assert!(extra.is_none(), "unexpected notification {extra:?}");
}
