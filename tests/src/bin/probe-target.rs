//! Fixture for probes: a tiny HTTP/1.1 server whose health answers as a mode file says.
//!
//! `probe-target --port PORT --mode-file FILE`
//!
//! Binds 127.0.0.1:PORT, prints `listening pid=<pid> port=<port>`, and answers every request by
//! the mode file's content at that moment: `ok` (or no file) → `200 OK`; `500` → `500 Internal
//! Server Error`; `hang` → reads the request and never answers (the connection stays open);
//! `refuse` → closes that connection and its listening socket, and goes on running without one
//! (every later connection is refused: a server that stopped answering).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let port: u16 = opt("--port").and_then(|p| p.parse().ok()).expect("--port PORT");
    let mode_file = PathBuf::from(opt("--mode-file").expect("--mode-file FILE"));
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    println!("listening pid={} port={port}", std::process::id());
    let mut held = Vec::new();
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut request = String::new();
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        // The request line and headers, up to the empty line.
        while reader.read_line(&mut request).is_ok_and(|n| n > 0) && !request.ends_with("\r\n\r\n") {}
        let mode = std::fs::read_to_string(&mode_file).unwrap_or_default().trim().to_owned();
        let answer = match mode.as_str() {
            "500" => {
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\nsick\n"
            }
            "hang" => {
                held.push(stream);
                continue;
            }
            "refuse" => break,
            _ => "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
        };
        let _ = stream.write_all(answer.as_bytes());
    }
    drop(listener);
    // No listener any more: alive, answering nothing, until a signal ends it.
    loop {
        std::thread::park();
    }
}
