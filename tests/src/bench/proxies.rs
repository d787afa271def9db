//! Loopback TCP proxies of the benchmark besides the byte counter
//! ([`layerlink_tests::CountingProxy`]): one times manifest PUTs on the push
//! path, one records what the registry sent during a sync.

use layerlink_tests::pump::Inspect;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A loopback TCP proxy that notes, per connection, when a request starting
/// `PUT /v2/…/manifests/` begins and when the first byte of its answer
/// comes back: the registry ingests the image's layers inside that request.
pub struct PutTimer {
    pub addr: SocketAddr,
    times: Arc<Mutex<Vec<Duration>>>,
    stop: Arc<AtomicBool>,
}

impl PutTimer {
    pub fn start(upstream: SocketAddr) -> std::io::Result<PutTimer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let times = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (times.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let pending: Arc<Mutex<Option<Instant>>> = Arc::default();
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                let p = pending.clone();
                std::thread::spawn(move || {
                    pump(client, server, |chunk| {
                        let line = chunk.split(|b| *b == b'\n').next().unwrap_or_default();
                        let line = String::from_utf8_lossy(line);
                        if line.starts_with("PUT /v2/") && line.contains("/manifests/") {
                            *p.lock().unwrap() = Some(Instant::now());
                        }
                    })
                });
                let t = t.clone();
                std::thread::spawn(move || {
                    pump(s2, c2, |_| {
                        if let Some(start) = pending.lock().unwrap().take() {
                            t.lock().unwrap().push(start.elapsed());
                        }
                    })
                });
            }
        });
        Ok(PutTimer { addr, times, stop })
    }

    /// The manifest PUT durations seen since the last call.
    pub fn take(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.times.lock().unwrap())
    }
}

impl Drop for PutTimer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Forward `from` → `to`, showing `on_chunk` every chunk first.
fn pump(from: TcpStream, to: TcpStream, on_chunk: impl FnMut(&[u8])) {
    layerlink_tests::pump::pump(from, to, 64 * 1024, &mut Inspect(on_chunk));
}

/// One connection's recorded bytes.
type Recording = Arc<Mutex<Vec<u8>>>;

/// A loopback TCP proxy keeping every server→client byte, per connection.
pub struct Recorder {
    pub addr: SocketAddr,
    streams: Arc<Mutex<Vec<Recording>>>,
    on: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    pub fn start(upstream: SocketAddr) -> std::io::Result<Recorder> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let streams: Arc<Mutex<Vec<Recording>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let on = Arc::new(AtomicBool::new(false));
        let (st, sp, o) = (streams.clone(), stop.clone(), on.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                let record: Recording = Arc::default();
                st.lock().unwrap().push(record.clone());
                let o = o.clone();
                std::thread::spawn(move || pump(client, server, |_| {}));
                std::thread::spawn(move || {
                    pump(s2, c2, |chunk| {
                        if o.load(Ordering::SeqCst) {
                            record.lock().unwrap().extend_from_slice(chunk);
                        }
                    })
                });
            }
        });
        Ok(Recorder {
            addr,
            streams,
            on,
            stop,
        })
    }

    /// Start or stop recording.
    pub fn record(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    /// Every connection's recorded server→client bytes; forgets them.
    pub fn take(&self) -> Vec<Vec<u8>> {
        self.streams
            .lock()
            .unwrap()
            .drain(..)
            .map(|s| std::mem::take(&mut *s.lock().unwrap()))
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}
