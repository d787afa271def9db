//! `layerlink-deltameasure`: binary-delta formats measured on real file pairs
//! (issue 12, step 1).
//!
//! Finds the *modified* regular files between two trees (same path,
//! different content): two layer tarballs (`--layers OLD.tar[.gz] NEW.tar[.gz]`,
//! read as streams, only the modified files kept) or two directories
//! (`--dirs OLD NEW`, e.g. two `dpkg-deb -x` of one package's versions).
//! For every pair it prints the new file's size whole (gzip -6 / zstd -19)
//! and the patch size for each format:
//!
//! * `bidiff` (bidiff 1.0 encoder / bipatch 1.0 streaming reader): raw,
//!   then after gzip -6 and zstd -19;
//! * `ddelta` 0.2 (streaming reader too): raw, gzip, zstd -19;
//! * `qbsdiff` 1.4 (BSDIFF40 with its own bzip2; its applier needs the old
//!   file and the patch in memory, so it is a size reference only);
//! * `zstd --patch-from` (the `zstd` CLI, -19 --long=27; the decoder needs
//!   the whole old file as a dictionary: reference only).
//!
//! Encoder CPU and peak memory, and the streaming decoders' peak memory, are
//! measured in a child process per run (`VmHWM` and utime+stime from
//! `/proc/self`), so one run's memory does not hide another's. The decoder
//! child streams old file -> new file through a 64 KiB buffer (and checks
//! the result), as the agent would.
//!
//! ```text
//! cargo build --release -p layerlink-tests --bin layerlink-deltameasure
//! B=/var/cache/layerlink/images/oci/blobs/sha256
//! apt-get download perl-base=5.36.0-7+deb12u3 perl-base=5.36.0-7+deb12u4 \
//!     libssl3=3.0.20-1~deb12u2 libssl3=3.0.22-1~deb12u2   # then dpkg-deb -x each
//! layerlink-deltameasure \
//!   --layers $B/<base-a:v1 layer> $B/<base-a:v2 layer> \
//!   --layers $B/<base-a:v1 layer> $B/<base-b:v1 layer 0> \
//!   --dirs perl-base_5.36.0-7+deb12u3_amd64 perl-base_5.36.0-7+deb12u4_amd64 \
//!   --dirs libssl3_3.0.20-1~deb12u2_amd64 libssl3_3.0.22-1~deb12u2_amd64
//! ```
//!
//! Result (2026-11-30; the test images' modified pairs are only dpkg/log
//! text and ldconfig's aux-cache, so the ELF pairs come from the two
//! security updates): patch / whole file, same compressor —
//!
//! | type | files | whole zst-19 | bidiff+gz | bidiff+zst | ddelta+zst | qbsdiff (bz2) | zstd --patch-from |
//! |---|---|---|---|---|---|---|---|
//! | ELF  | 10 | 4,287,444 | 0.100 | 0.096 | 0.098 | 0.101 | 0.177 |
//! | text | 10 |   126,438 | 0.042 | 0.037 | 0.042 | 0.042 | 0.029 |
//! | data (4 of 5 are .gz) | 5 | 274,337 | 0.982 | 0.981 | 0.983 | 0.995 | 0.921 |
//!
//! Encoder (bidiff, one thread): 1.69 s CPU for the 14 MB of ELF, peak RSS
//! 35 MiB for libcrypto.so.3 (4.7 MB); ddelta and qbsdiff are alike. The
//! streaming decoders (bipatch, ddelta) peak at ~2.6 MiB RSS in this
//! (std, glibc) measuring process whatever the file size; qbsdiff's and
//! zstd's appliers need the old file (and the patch) in memory.
//!
//! Prints one line per pair and a per-type (ELF, text, data) summary.

use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// A modified file: (path, old content, new content).
type Pair = (String, Vec<u8>, Vec<u8>);

const FORMATS: [&str; 3] = ["bidiff", "ddelta", "qbsdiff"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("child-encode") => child_encode(&args[1..]),
        Some("child-decode") => child_decode(&args[1..]),
        _ => driver(&args),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layerlink-deltameasure: {e}");
            ExitCode::FAILURE
        }
    }
}

fn err(s: impl Into<String>) -> io::Error {
    io::Error::other(s.into())
}

/// (peak RSS KiB, user+system CPU ms) of this process so far.
fn self_usage() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (hwm, ticks * 10)
}

/// `child-encode FORMAT OLD NEW PATCH`: prints `rss_kib cpu_ms wall_ms`.
fn child_encode(a: &[String]) -> io::Result<()> {
    let [fmt, old, new, patch] = a else {
        return Err(err("child-encode FORMAT OLD NEW PATCH"));
    };
    let old = std::fs::read(old)?;
    let new = std::fs::read(new)?;
    let (_, cpu0) = self_usage();
    let t = Instant::now();
    let mut out = Vec::new();
    match fmt.as_str() {
        "bidiff" => bidiff::simple_diff(&old, &new, &mut out)?,
        "ddelta" => {
            ddelta::generate(&old, &new, &mut out, |_| {}).map_err(|e| err(e.to_string()))?
        }
        "qbsdiff" => {
            qbsdiff::Bsdiff::new(&old, &new)
                .compression_level(9)
                .compare(io::Cursor::new(&mut out))?;
        }
        f => return Err(err(format!("unknown format {f}"))),
    }
    let wall = t.elapsed().as_millis();
    std::fs::write(patch, &out)?;
    let (rss, cpu1) = self_usage();
    println!("{rss} {} {wall}", cpu1 - cpu0);
    Ok(())
}

/// `child-decode FORMAT OLD PATCH NEW`: streams, prints `rss_kib cpu_ms`.
fn child_decode(a: &[String]) -> io::Result<()> {
    let [fmt, old, patch, new] = a else {
        return Err(err("child-decode FORMAT OLD PATCH NEW"));
    };
    let mut old = std::fs::File::open(old)?;
    let mut patch = io::BufReader::with_capacity(64 << 10, std::fs::File::open(patch)?);
    let mut out = io::BufWriter::with_capacity(64 << 10, std::fs::File::create(new)?);
    let (_, cpu0) = self_usage();
    match fmt.as_str() {
        "bidiff" => {
            let mut r = bipatch::Reader::new(patch, &mut old).map_err(|e| err(e.to_string()))?;
            io::copy(&mut r, &mut out)?;
        }
        "ddelta" => {
            ddelta::apply(&mut old, &mut out, &mut patch).map_err(|e| err(e.to_string()))?
        }
        f => return Err(err(format!("no streaming decoder for {f}"))),
    }
    out.flush()?;
    let (rss, cpu1) = self_usage();
    println!("{rss} {}", cpu1 - cpu0);
    Ok(())
}

fn gz(b: &[u8]) -> usize {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(b).unwrap();
    e.finish().unwrap().len()
}

fn zst(b: &[u8]) -> usize {
    zstd::bulk::compress(b, 19).unwrap().len()
}

fn kind(b: &[u8]) -> &'static str {
    if b.starts_with(b"\x7fELF") {
        "ELF"
    } else if !b.contains(&0) && std::str::from_utf8(b).is_ok() {
        "text"
    } else {
        "data"
    }
}

/// Regular files of a layer tar (gzip'd or not): path -> content for the
/// paths `keep` accepts.
fn tar_files(
    path: &Path,
    mut keep: impl FnMut(&str, &[u8]) -> bool,
) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let f = io::BufReader::new(std::fs::File::open(path)?);
    let mut head = [0u8; 2];
    let mut f = f;
    {
        use std::io::BufRead;
        let b = f.fill_buf()?;
        head.copy_from_slice(&b[..2.min(b.len())]);
    }
    let r: Box<dyn Read> = if head == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(r);
    for e in ar.entries()? {
        let mut e = e?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let p = e
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut b = Vec::new();
        e.read_to_end(&mut b)?;
        if keep(&p, &b) {
            out.insert(p, b);
        }
    }
    Ok(out)
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Modified pairs (path, old, new) between two layer tars.
fn layer_pairs(old: &Path, new: &Path) -> io::Result<Vec<Pair>> {
    let mut old_digests: HashMap<String, [u8; 32]> = HashMap::new();
    tar_files(old, |p, b| {
        old_digests.insert(p.to_string(), sha(b));
        false
    })?;
    let news = tar_files(new, |p, b| old_digests.get(p).is_some_and(|d| *d != sha(b)))?;
    let olds = tar_files(old, |p, _| news.contains_key(p))?;
    Ok(news
        .into_iter()
        .map(|(p, n)| {
            let o = olds[&p].clone();
            (p, o, n)
        })
        .collect())
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(root, &e.path(), out)?;
        } else if t.is_file() {
            out.push(
                e.path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into(),
            );
        }
    }
    Ok(())
}

fn dir_pairs(old: &Path, new: &Path) -> io::Result<Vec<Pair>> {
    let mut paths = Vec::new();
    walk(new, new, &mut paths)?;
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let Ok(o) = std::fs::read(old.join(&p)) else {
            continue;
        };
        let n = std::fs::read(new.join(&p))?;
        if o != n {
            out.push((p, o, n));
        }
    }
    Ok(out)
}

#[derive(Default, Clone)]
struct Sums {
    files: usize,
    new: usize,
    whole_gz: usize,
    whole_zst: usize,
    // per format: raw, gz, zst
    patch: BTreeMap<String, [usize; 3]>,
    enc_ms: BTreeMap<String, u64>,
    enc_rss: BTreeMap<String, u64>,
    dec_rss: BTreeMap<String, u64>,
}

fn run_child(args: &[&str]) -> io::Result<Vec<u64>> {
    let me = std::env::current_exe()?;
    let o = Command::new(me).args(args).output()?;
    if !o.status.success() {
        return Err(err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect())
}

fn driver(args: &[String]) -> io::Result<()> {
    let mut sets: Vec<(String, Vec<Pair>)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let (flag, a, b) = (
            args[i].as_str(),
            args.get(i + 1).ok_or_else(|| err("missing OLD"))?,
            args.get(i + 2).ok_or_else(|| err("missing NEW"))?,
        );
        let pairs = match flag {
            "--layers" => layer_pairs(Path::new(a), Path::new(b))?,
            "--dirs" => dir_pairs(Path::new(a), Path::new(b))?,
            f => {
                return Err(err(format!(
                    "unknown flag {f}; usage: --layers OLD NEW | --dirs OLD NEW ..."
                )))
            }
        };
        sets.push((format!("{a} -> {b}"), pairs));
        i += 3;
    }
    if sets.is_empty() {
        return Err(err(
            "usage: layerlink-deltameasure (--layers OLD NEW | --dirs OLD NEW)...",
        ));
    }
    let tmp = tempfile::tempdir()?;
    let (po, pn, pp, pd) = (
        tmp.path().join("old"),
        tmp.path().join("new"),
        tmp.path().join("patch"),
        tmp.path().join("out"),
    );
    let has_zstd_cli = Command::new("zstd").arg("--version").output().is_ok();
    let mut by_kind: BTreeMap<&'static str, Sums> = BTreeMap::new();
    println!(
        "{:<52} {:>5} {:>9} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>8} | {:>8} | enc ms b/d/q | enc MiB b/d/q | dec KiB b/d",
        "path", "type", "new", "gz", "zst19", "bidiff", "b+gz", "b+zst", "dd+gz", "dd+zst", "qbsdiff", "zst-pf"
    );
    for (name, pairs) in &sets {
        println!("# {name}: {} modified files", pairs.len());
        for (path, old, new) in pairs {
            std::fs::write(&po, old)?;
            std::fs::write(&pn, new)?;
            let k = kind(new);
            let s = by_kind.entry(k).or_default();
            s.files += 1;
            s.new += new.len();
            let (wg, wz) = (gz(new), zst(new));
            s.whole_gz += wg;
            s.whole_zst += wz;
            let mut row = format!(
                "{:<52} {:>5} {:>9} {:>8} {:>8} |",
                truncate(path, 52),
                k,
                new.len(),
                wg,
                wz
            );
            let mut enc_ms = Vec::new();
            let mut enc_mib = Vec::new();
            let mut dec_kib = Vec::new();
            for fmt in FORMATS {
                let e = run_child(&[
                    "child-encode",
                    fmt,
                    po.to_str().unwrap(),
                    pn.to_str().unwrap(),
                    pp.to_str().unwrap(),
                ])?;
                let patch = std::fs::read(&pp)?;
                let sizes = [patch.len(), gz(&patch), zst(&patch)];
                let t = s.patch.entry(fmt.into()).or_default();
                for j in 0..3 {
                    t[j] += sizes[j];
                }
                *s.enc_ms.entry(fmt.into()).or_default() += e[1];
                let m = s.enc_rss.entry(fmt.into()).or_default();
                *m = (*m).max(e[0]);
                enc_ms.push(e[1].to_string());
                enc_mib.push(format!("{:.0}", e[0] as f64 / 1024.0));
                match fmt {
                    "bidiff" => {
                        row += &format!(" {:>8} {:>8} {:>8} |", sizes[0], sizes[1], sizes[2])
                    }
                    "ddelta" => row += &format!(" {:>8} {:>8} |", sizes[1], sizes[2]),
                    _ => row += &format!(" {:>8} |", sizes[0]),
                }
                if fmt != "qbsdiff" {
                    let d = run_child(&[
                        "child-decode",
                        fmt,
                        po.to_str().unwrap(),
                        pp.to_str().unwrap(),
                        pd.to_str().unwrap(),
                    ])?;
                    if std::fs::read(&pd)? != *new {
                        return Err(err(format!("{fmt}: {path}: applied patch differs")));
                    }
                    let m = s.dec_rss.entry(fmt.into()).or_default();
                    *m = (*m).max(d[0]);
                    dec_kib.push(d[0].to_string());
                }
            }
            let zpf = if has_zstd_cli {
                let o = Command::new("zstd")
                    .args(["-q", "-19", "--long=27", "-c", "--patch-from"])
                    .arg(&po)
                    .arg(&pn)
                    .output()?;
                o.stdout.len()
            } else {
                0
            };
            let t = s.patch.entry("zstd-patch-from".into()).or_default();
            t[2] += zpf;
            row += &format!(
                " {:>8} | {} | {} | {}",
                zpf,
                enc_ms.join("/"),
                enc_mib.join("/"),
                dec_kib.join("/")
            );
            println!("{row}");
        }
    }
    println!("\n# per type: bytes summed over files; patch after gzip -6 / zstd -19; ratio = patch / whole (same compressor)");
    for (k, s) in &by_kind {
        println!(
            "{k}: {} files, new {} B, whole gz {} zst {}",
            s.files, s.new, s.whole_gz, s.whole_zst
        );
        for (fmt, [raw, g, z]) in &s.patch {
            if fmt == "zstd-patch-from" {
                println!(
                    "  {fmt:<16} zst {z:>9} ({:.3} of whole zst)",
                    *z as f64 / s.whole_zst.max(1) as f64
                );
            } else {
                println!(
                    "  {fmt:<16} raw {raw:>9} gz {g:>9} ({:.3}) zst {z:>9} ({:.3})  enc CPU {} ms, enc peak RSS {:.1} MiB, dec peak RSS {} KiB",
                    *g as f64 / s.whole_gz.max(1) as f64,
                    *z as f64 / s.whole_zst.max(1) as f64,
                    s.enc_ms[fmt],
                    s.enc_rss[fmt] as f64 / 1024.0,
                    s.dec_rss.get(fmt).map(|v| v.to_string()).unwrap_or("-".into()),
                );
            }
        }
    }
    let _ = PathBuf::new();
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        format!("…{}", &s[s.len() - (n - 1)..])
    }
}
