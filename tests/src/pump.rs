//! The one TCP pump of the harness proxies: forwards one direction of a
//! proxied connection, chunk by chunk, and lets a [`Tap`] see every chunk
//! before it is forwarded. The taps are what differ between the proxies:
//! [`CountingProxy`](crate::CountingProxy) counts, paces and cuts,
//! [`FaultProxy`](crate::faultproxy::FaultProxy) cuts, stalls and
//! truncates at a byte offset, the benchmark's proxies time requests and
//! record responses ([`Inspect`]).
//!
//! The loop: read a chunk (at most [`Tap::read_size`] bytes), ask the tap
//! what to do with it ([`Tap::look`]), write the part to forward (calling
//! [`Tap::before_write`] and, when the write succeeded, [`Tap::written`]),
//! and at a split point ask the tap how to go on ([`Tap::at_split`]). A
//! failed write or the end of the input ends the pump. On the way out it
//! half-closes `to`, passing the EOF on so the other direction can finish
//! (a no-op on a socket a tap has already shut down).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

/// What a [`Tap`] wants done with a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Forward the whole chunk and read on.
    Forward,
    /// Forward the first `n` bytes (at most the chunk), then call
    /// [`Tap::at_split`]; if the pump goes on, the rest of the chunk is
    /// looked at as a chunk of its own.
    Split(usize),
}

/// How the pump goes on at a split point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Go on forwarding.
    Go,
    /// Stop (the rest of the chunk is not forwarded).
    Stop,
}

/// What a proxy does to the bytes of one direction of one connection.
/// Every method has a default that forwards faithfully.
pub trait Tap {
    /// The most bytes the next read may return (capped at the buffer).
    fn read_size(&mut self) -> usize {
        usize::MAX
    }

    /// A chunk was read (or is the rest after a split): what to do with it.
    fn look(&mut self, _chunk: &[u8]) -> Step {
        Step::Forward
    }

    /// `n` (> 0) bytes are about to be written to the peer.
    fn before_write(&mut self, _n: usize) {}

    /// `n` (> 0) bytes were written to the peer.
    fn written(&mut self, _n: usize) {}

    /// The bytes before a [`Step::Split`] point have been written.
    fn at_split(&mut self) -> After {
        After::Go
    }
}

/// A tap that only looks: calls the closure with every chunk before it is
/// forwarded.
pub struct Inspect<F: FnMut(&[u8])>(pub F);

impl<F: FnMut(&[u8])> Tap for Inspect<F> {
    fn look(&mut self, chunk: &[u8]) -> Step {
        (self.0)(chunk);
        Step::Forward
    }
}

/// Forward `from` → `to` through `tap`, reading into a buffer of
/// `buf_len` bytes, until the input ends, a write fails or the tap stops;
/// then half-close `to`.
pub fn pump(mut from: TcpStream, mut to: TcpStream, buf_len: usize, tap: &mut impl Tap) {
    let mut buf = vec![0u8; buf_len];
    'read: loop {
        let limit = tap.read_size().min(buf.len());
        let n = match from.read(&mut buf[..limit]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            let (now, split) = match tap.look(chunk) {
                Step::Forward => (chunk.len(), false),
                Step::Split(k) => (k.min(chunk.len()), true),
            };
            if now > 0 {
                tap.before_write(now);
                if to.write_all(&chunk[..now]).is_err() {
                    break 'read;
                }
                tap.written(now);
            }
            chunk = &chunk[now..];
            if split && tap.at_split() == After::Stop {
                break 'read;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connected pair of loopback sockets.
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// Pump `input` through `tap`; what came out.
    fn through(input: &[u8], tap: &mut impl Tap) -> Vec<u8> {
        let (mut src, from) = pair();
        let (to, mut sink) = pair();
        src.write_all(input).unwrap();
        src.shutdown(Shutdown::Write).unwrap();
        pump(from, to, 1024, tap);
        let mut out = Vec::new();
        sink.read_to_end(&mut out).unwrap();
        out
    }

    /// Forwards `at` bytes, then records the split and does `then`;
    /// counts what it is told was written.
    struct SplitAt {
        at: usize,
        seen: usize,
        then: After,
        splits: u32,
        written: usize,
    }

    impl Tap for SplitAt {
        fn read_size(&mut self) -> usize {
            100
        }
        fn look(&mut self, chunk: &[u8]) -> Step {
            let step = if self.splits == 0 && self.seen + chunk.len() >= self.at {
                Step::Split(self.at - self.seen)
            } else {
                Step::Forward
            };
            self.seen += match step {
                Step::Split(n) => n,
                Step::Forward => chunk.len(),
            };
            step
        }
        fn written(&mut self, n: usize) {
            self.written += n;
        }
        fn at_split(&mut self) -> After {
            self.splits += 1;
            self.then
        }
    }

    #[test]
    fn forwards_everything_by_default_and_inspects_every_byte() {
        let input: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut seen = 0;
        let out = through(&input, &mut Inspect(|c: &[u8]| seen += c.len()));
        assert_eq!(out, input);
        assert_eq!(seen, input.len());
    }

    #[test]
    fn a_split_that_stops_forwards_only_the_head() {
        let input = vec![7u8; 1000];
        let mut tap = SplitAt {
            at: 250,
            seen: 0,
            then: After::Stop,
            splits: 0,
            written: 0,
        };
        assert_eq!(through(&input, &mut tap).len(), 250);
        assert_eq!((tap.splits, tap.written), (1, 250));
    }

    #[test]
    fn a_split_that_goes_on_forwards_the_rest() {
        let input: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut tap = SplitAt {
            at: 250,
            seen: 0,
            then: After::Go,
            splits: 0,
            written: 0,
        };
        assert_eq!(through(&input, &mut tap), input);
        assert_eq!((tap.splits, tap.written), (1, 1000));
    }
}
