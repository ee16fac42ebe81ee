//! A tiny hostile HTTP server for tests: 127.0.0.1 only, a bounded number of connections,
//! at most 30 s and 64 MiB per connection, then it stops by itself.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// What the server answers to every request.
#[derive(Clone)]
pub enum Body {
    /// `200 OK` with no length, then bytes until the client hangs up.
    Endless,
    /// `200 OK` announcing a megabyte, then one byte every 50 ms.
    Trickle,
    /// `200 OK` with these bytes, announcing their length or not.
    Exact {
        /// The body.
        bytes: Vec<u8>,
        /// Whether to send `Content-Length`.
        announce: bool,
    },
}

const SERVER_LIFETIME: Duration = Duration::from_secs(30);
const MAX_SENT: usize = 64 << 20;

/// Serves `body` to up to `connections` clients, one after another; returns the base URL.
pub fn serve(body: Body, connections: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let started = Instant::now();
        let mut served = 0;
        while served < connections && started.elapsed() < SERVER_LIFETIME {
            match listener.accept() {
                Ok((stream, _)) => {
                    served += 1;
                    answer(stream, &body, started);
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    url
}

fn answer(mut stream: TcpStream, body: &Body, started: Instant) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Read the request head (the body of a POST, if any, is ignored).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let alive = || started.elapsed() < SERVER_LIFETIME;
    match body {
        Body::Endless => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            let chunk = vec![b'x'; 64 << 10];
            let mut sent = 0;
            while sent < MAX_SENT && alive() && stream.write_all(&chunk).is_ok() {
                sent += chunk.len();
            }
        }
        Body::Trickle => {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n",
            );
            while alive() && stream.write_all(b"x").is_ok() {
                thread::sleep(Duration::from_millis(50));
            }
        }
        Body::Exact { bytes, announce } => {
            let length = if *announce {
                format!("Content-Length: {}\r\n", bytes.len())
            } else {
                String::new()
            };
            let head = format!("HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(bytes);
        }
    }
}
