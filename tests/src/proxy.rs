//! A TCP proxy on loopback that counts the bytes on the wire in both
//! directions and can cut the connection after a number of bytes.

use crate::pump::{pump, After, Step, Tap};
use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU8;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Shared {
    up: AtomicU64,
    down: AtomicU64,
    connections: AtomicU64,
    /// Numbers connections in `open` (never reset, unlike `connections`).
    next_id: AtomicU64,
    stop: AtomicBool,
    /// Server→client bytes still allowed before every open connection is
    /// cut (one shot: cleared when it fires).
    cut_down_after: Mutex<Option<u64>>,
    /// Server→client bytes per second per connection (0 = unlimited).
    down_rate: AtomicU64,
    /// Both sockets of every open connection, by connection number (a
    /// connection leaves when both directions are done, so a client that
    /// opens thousands of connections does not run out of descriptors).
    open: Mutex<HashMap<u64, [TcpStream; 2]>>,
}

/// Forwards `127.0.0.1:<port>` to an upstream address, counting bytes.
pub struct CountingProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl CountingProxy {
    /// Listen on an ephemeral loopback port and forward to `upstream`.
    pub fn start(upstream: SocketAddr) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let id = s.next_id.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                // What is counted is what was written to the client's
                // socket. Linux grows a loopback send buffer up to 4 MiB:
                // bytes the client never received, which a cut would count
                // as lost on the wire although no link carried them (the
                // agent's resumption figures were 4× on loopback, 1.2×
                // with this). 16 KiB (the kernel doubles it) keeps what
                // sits unsent under 32 KiB.
                let _ = socket2::SockRef::from(&client).set_send_buffer_size(16 * 1024);
                let clones = (|| {
                    Ok::<_, std::io::Error>((
                        [client.try_clone()?, server.try_clone()?],
                        client.try_clone()?,
                        server.try_clone()?,
                    ))
                })();
                let Ok((kept, c2, s2)) = clones else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                s.open.lock().unwrap().insert(id, kept);
                // The second direction to finish forgets the connection.
                let pumps_left = Arc::new(AtomicU8::new(2));
                for (from, to, down) in [(client, server, false), (s2, c2, true)] {
                    let (sh, left) = (s.clone(), pumps_left.clone());
                    std::thread::spawn(move || {
                        let mut tap = Counting {
                            shared: &sh,
                            down,
                            started: Instant::now(),
                            sent: 0,
                            rate: 0,
                        };
                        pump(from, to, 32 * 1024, &mut tap);
                        if left.fetch_sub(1, Ordering::SeqCst) == 1 {
                            sh.open.lock().unwrap().remove(&id);
                        }
                    });
                }
            }
        });
        CountingProxy { addr, shared }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Client→server bytes so far.
    pub fn bytes_up(&self) -> u64 {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Server→client bytes so far.
    pub fn bytes_down(&self) -> u64 {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Bytes both ways so far.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_up() + self.bytes_down()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Limit server→client traffic to `bytes_per_sec` per connection (a
    /// slow link; 0 = unlimited). Bytes are counted when forwarded, so at a
    /// rate the peer keeps up with, little sits unread in socket buffers.
    pub fn limit_down(&self, bytes_per_sec: u64) {
        self.shared.down_rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Zero the counters.
    pub fn reset(&self) {
        self.shared.up.store(0, Ordering::SeqCst);
        self.shared.down.store(0, Ordering::SeqCst);
        self.shared.connections.store(0, Ordering::SeqCst);
    }

    /// After `n` more server→client bytes, cut every open connection (both
    /// directions, as a network failure would). One shot.
    pub fn cut_after(&self, n: u64) {
        *self.shared.cut_down_after.lock().unwrap() = Some(n);
    }

    /// Whether a cut asked for with [`cut_after`](Self::cut_after) has not
    /// fired yet.
    pub fn cut_pending(&self) -> bool {
        self.shared.cut_down_after.lock().unwrap().is_some()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        cut_all(&self.shared);
    }
}

fn cut_all(shared: &Shared) {
    for (_, pair) in shared.open.lock().unwrap().drain() {
        for s in pair {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// The tap of one direction: counts what it forwards (before writing it:
/// once the bytes are written the peer can answer, and a test reading the
/// counters after that answer must see them; counting afterwards raced,
/// and CI caught it), paces the server→client stream at
/// [`limit_down`](CountingProxy::limit_down)'s rate and cuts every
/// connection when the [`cut_after`](CountingProxy::cut_after) budget runs
/// out. A failed write stays counted: some of it may have arrived, and
/// overcounting only makes our figures look worse, never better.
struct Counting<'a> {
    shared: &'a Shared,
    down: bool,
    started: Instant,
    /// Bytes forwarded so far (for the pace).
    sent: u64,
    /// The rate read for the current chunk (0 = unlimited).
    rate: u64,
}

impl Tap for Counting<'_> {
    fn read_size(&mut self) -> usize {
        self.rate = if self.down {
            self.shared.down_rate.load(Ordering::SeqCst)
        } else {
            0
        };
        // Small reads when limited, so the pace is even.
        if self.rate > 0 {
            4096
        } else {
            usize::MAX
        }
    }

    fn look(&mut self, chunk: &[u8]) -> Step {
        if !self.down {
            return Step::Forward;
        }
        let n = chunk.len() as u64;
        let mut budget = self.shared.cut_down_after.lock().unwrap();
        match *budget {
            Some(left) if n >= left => {
                *budget = None;
                Step::Split(left as usize)
            }
            Some(left) => {
                *budget = Some(left - n);
                Step::Forward
            }
            None => Step::Forward,
        }
    }

    fn before_write(&mut self, n: usize) {
        if self.rate > 0 {
            let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        self.sent += n as u64;
        let counter = if self.down {
            &self.shared.down
        } else {
            &self.shared.up
        };
        counter.fetch_add(n as u64, Ordering::SeqCst);
    }

    fn at_split(&mut self) -> After {
        cut_all(self.shared);
        After::Stop
    }
}
