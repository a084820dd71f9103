//! A test origin: serves `GET /items/{key}` from a map, takes `PUT`s into it, counts
//! calls, and can hold every request at a gate or answer with a chosen status, so tests
//! can stage slow, failing and racing fills. Stops when dropped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    values: HashMap<String, String>,
    gets: usize,
    puts: usize,
    status: Option<u16>,
    gate_closed: bool,
}

#[derive(Clone, Default)]
pub struct Origin {
    state: Arc<(Mutex<State>, Condvar)>,
    addr: Option<SocketAddr>,
}

impl Origin {
    pub fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = Origin {
            addr: Some(listener.local_addr().unwrap()),
            ..Origin::default()
        };
        let served = origin.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let served = served.clone();
                std::thread::spawn(move || served.serve(stream));
            }
        });
        origin
    }

    /// The ORIGIN_URL template for this origin.
    pub fn template(&self) -> String {
        format!("http://{}/items/{{key}}", self.addr.unwrap())
    }

    pub fn set(&self, key: &str, value: &str) {
        self.state
            .0
            .lock()
            .unwrap()
            .values
            .insert(key.into(), value.into());
    }

    pub fn value(&self, key: &str) -> Option<String> {
        self.state.0.lock().unwrap().values.get(key).cloned()
    }

    pub fn gets(&self) -> usize {
        self.state.0.lock().unwrap().gets
    }

    pub fn puts(&self) -> usize {
        self.state.0.lock().unwrap().puts
    }

    /// Answer every request with this status (None: normally).
    pub fn fail_with(&self, status: Option<u16>) {
        self.state.0.lock().unwrap().status = status;
    }

    /// Hold every request (after it has been counted and its answer chosen) until opened.
    pub fn close_gate(&self) {
        self.state.0.lock().unwrap().gate_closed = true;
    }

    pub fn open_gate(&self) {
        self.state.0.lock().unwrap().gate_closed = false;
        self.state.1.notify_all();
    }

    fn serve(&self, mut stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            let head = match request.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        continue;
                    }
                },
                Err(_) => return,
            };
            let method = request.method.unwrap_or("").to_owned();
            let key = request
                .path
                .unwrap_or("")
                .trim_start_matches("/items/")
                .to_owned();
            let key = percent_encoding::percent_decode_str(&key)
                .decode_utf8_lossy()
                .into_owned();
            let length: usize = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            while buf.len() < head + length {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = String::from_utf8_lossy(&buf[head..head + length]).into_owned();
            buf.drain(..head + length);
            let (status, answer) = {
                let (lock, gate) = &*self.state;
                let mut state = lock.lock().unwrap();
                let answer = match (state.status, method.as_str()) {
                    (Some(status), _) => (status, String::new()),
                    (None, "PUT") => {
                        state.puts += 1;
                        state.values.insert(key, body);
                        (204, String::new())
                    }
                    (None, _) => {
                        state.gets += 1;
                        match state.values.get(&key) {
                            Some(v) => (200, v.clone()),
                            None => (404, String::new()),
                        }
                    }
                };
                while state.gate_closed {
                    state = gate.wait(state).unwrap();
                }
                answer
            };
            let response = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            );
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }
}
