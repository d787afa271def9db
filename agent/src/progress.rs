//! Progress of a sync's download: new content received, rate and ETA;
//! [`human`] sizes for every line a person reads.
//!
//! On a terminal one line is redrawn in place (at most 5 times a second);
//! otherwise (a log, the journal) a line is printed every 5 seconds, so
//! a long receive is never silent. Counts the new file content stored (the
//! `x-layerlink-new-bytes` of the archive is the total), which is what the
//! ETA can be computed from; references to held files cost no time.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Redraw interval on a terminal.
const TTY_EVERY: Duration = Duration::from_millis(200);
/// Line interval otherwise.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// A progress meter for one download.
#[derive(Debug)]
pub struct Meter {
    total: Option<u64>,
    done: u64,
    start: Instant,
    last: Instant,
    tty: bool,
    drawn: bool,
}

impl Meter {
    /// A meter expecting `total` bytes (when known), drawing on stderr.
    pub fn new(total: Option<u64>) -> Meter {
        let now = Instant::now();
        Meter {
            total,
            done: 0,
            start: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    /// `n` more bytes received; draws when due.
    pub fn add(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        let now = Instant::now();
        let every = if self.tty { TTY_EVERY } else { LOG_EVERY };
        if now.duration_since(self.last) >= every {
            self.last = now;
            self.drawn = true;
            let line = line(self.done, self.total, now.duration_since(self.start));
            if self.tty {
                // Redrawn in place; the cursor goes back to the line start
                // so that any other message overwrites it.
                eprint!("{line}\x1b[K\r");
            } else {
                eprintln!("{line}");
            }
        }
    }

    /// Bytes counted so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Clear the terminal line (nothing to do in a log).
    pub fn finish(&mut self) {
        if self.tty && self.drawn {
            eprint!("\x1b[K");
            self.drawn = false;
        }
    }
}

/// `received 12.3 MiB of 40.0 MiB (30 %) at 1.2 MiB/s, ETA 0:23`.
pub fn line(done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let ms = elapsed.as_millis().max(1) as u64;
    let rate = done.saturating_mul(1000) / ms;
    let mut s = format!("received {}", human(done));
    if let Some(t) = total.filter(|&t| t > 0) {
        let pct = done.min(t).saturating_mul(100) / t;
        s.push_str(&format!(" of {} ({pct} %)", human(t)));
    }
    s.push_str(&format!(" at {}/s", human(rate)));
    if let Some(left) = total.and_then(|t| t.saturating_sub(done).checked_div(rate)) {
        s.push_str(&format!(", ETA {}:{:02}", left / 60, left % 60));
    }
    s
}

/// `12.3 MiB`-style sizes for progress lines (integer arithmetic: no
/// float formatting code in the binary).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut u = 0;
    let mut div: u64 = 1;
    while n / div >= 1024 && u < UNITS.len() - 1 {
        div *= 1024;
        u += 1;
    }
    if u == 0 {
        return format!("{n} B");
    }
    let tenths = (n as u128 * 10 / div as u128) as u64;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let l = line(10 << 20, Some(40 << 20), Duration::from_secs(10));
        assert_eq!(
            l,
            "received 10.0 MiB of 40.0 MiB (25 %) at 1.0 MiB/s, ETA 0:30"
        );
        let l = line(0, None, Duration::ZERO);
        assert_eq!(l, "received 0 B at 0 B/s");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(12), "12 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 30), "5.0 GiB");
    }
}
