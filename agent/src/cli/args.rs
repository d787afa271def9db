//! Flags and positional arguments of one command. Every flag is known
//! here (a value flag takes `--flag V` or `--flag=V`); each command then
//! refuses the flags it does not take ([`Args::only`]).

use super::usage;
use crate::error::Result;
use std::ffi::OsString;
use std::path::PathBuf;

/// Parsed flags and positional arguments of one command.
#[derive(Default, Debug)]
pub(super) struct Args {
    flags: Vec<(String, Option<String>)>,
    pub(super) positional: Vec<String>,
}

/// Flags that take a value.
const VALUE_FLAGS: &[&str] = &[
    "--server",
    "--store",
    "--token",
    "--token-file",
    "--ca-file",
    "--platform",
    "--config",
    "--retry-for",
    "--keep",
    "--verify-layers",
    "--trust-key",
];
/// Flags without a value.
const BOOL_FLAGS: &[&str] = &[
    "--json",
    "--read-only",
    "--quiet",
    "-q",
    "--no-devices",
    "--no-zstd",
    "--no-deltas",
    "--force-platform",
    "--repair",
    "--help",
    "-h",
];

/// Parse one command's arguments with `lexopt`. The flags are the two
/// lists above; the error messages are those of the hand-rolled parser
/// this replaced (`unknown option ARG` with the argument as given,
/// `FLAG needs a value`, `arguments must be UTF-8`), and so is what is
/// accepted: no clustered short flags (`-qh`), no value on a flag without
/// one (`--json=x`).
pub(super) fn parse_args(raw: &[OsString]) -> Result<Args> {
    let mut a = Args::default();
    let mut p = lexopt::Parser::from_args(raw.iter().cloned());
    // Short flags are whole arguments: `-q=x` is an unknown option, not `-q`
    // with a value.
    p.set_short_equals(false);
    let utf8 = |v: OsString| {
        v.into_string()
            .map_err(|_| usage("arguments must be UTF-8"))
    };
    loop {
        // lexopt would turn a non-UTF-8 option name into U+FFFD.
        if let Some(raw) = p.try_raw_args() {
            if raw.peek().is_some_and(|v| v.to_str().is_none()) {
                return Err(usage("arguments must be UTF-8"));
            }
        }
        let name = match p.next().map_err(|e| usage(e.to_string()))? {
            None => return Ok(a),
            Some(lexopt::Arg::Value(v)) => {
                a.positional.push(utf8(v)?);
                continue;
            }
            Some(lexopt::Arg::Long(n)) => format!("--{n}"),
            Some(lexopt::Arg::Short(c)) => format!("-{c}"),
        };
        // What followed the name in the same argument (`--name=V`, `-qV`).
        let inline = p.optional_value();
        if VALUE_FLAGS.contains(&name.as_str()) {
            let v = match inline {
                Some(v) => utf8(v)?,
                None => p
                    .value()
                    .ok()
                    .and_then(|v| v.into_string().ok())
                    .ok_or_else(|| usage(format!("{name} needs a value")))?,
            };
            a.flags.push((name, Some(v)));
        } else if BOOL_FLAGS.contains(&name.as_str()) && inline.is_none() {
            a.flags.push((name, None));
        } else {
            let whole = match (inline, name.starts_with("--")) {
                (Some(v), true) => format!("{name}={}", v.to_string_lossy()),
                (Some(v), false) => format!("{name}{}", v.to_string_lossy()),
                (None, _) => name,
            };
            return Err(usage(format!("unknown option {whole}")));
        }
    }
}

impl Args {
    pub(super) fn value(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
    pub(super) fn has(&self, names: &[&str]) -> bool {
        self.flags.iter().any(|(n, _)| names.contains(&n.as_str()))
    }
    /// Fail on flags this command does not take.
    pub(super) fn only(&self, cmd: &str, allowed: &[&str]) -> Result<()> {
        for (n, _) in &self.flags {
            if !allowed.contains(&n.as_str()) && !["--help", "-h"].contains(&n.as_str()) {
                return Err(usage(format!("{cmd} does not take {n}")));
            }
        }
        Ok(())
    }
    pub(super) fn store(&self) -> Result<PathBuf> {
        self.value("--store")
            .map(PathBuf::from)
            .ok_or_else(|| usage("--store DIR is required"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags() {
        let raw: Vec<OsString> = ["--store=/s", "--server", "http://x", "-q", "img:v1"]
            .iter()
            .map(OsString::from)
            .collect();
        let a = parse_args(&raw).unwrap();
        assert_eq!(a.value("--store"), Some("/s"));
        assert_eq!(a.value("--server"), Some("http://x"));
        assert!(a.has(&["-q"]));
        assert_eq!(a.positional, vec!["img:v1"]);
        assert!(parse_args(&[OsString::from("--bogus")]).is_err());
        assert!(parse_args(&[OsString::from("--server")]).is_err());
    }

    /// What is accepted and every error message, as the hand-rolled parser
    /// gave them (this table passed against it before lexopt came in).
    #[test]
    fn accepts_and_refuses_like_before() {
        use std::os::unix::ffi::OsStringExt;
        let bad = |b: &[u8]| OsString::from_vec(b.to_vec());
        let s = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let err = |raw: Vec<OsString>| match parse_args(&raw) {
            Err(crate::Error::Usage(m)) => m,
            other => panic!("{raw:?}: {other:?}"),
        };
        for (raw, want) in [
            (s(&["--bogus"]), "unknown option --bogus"),
            (s(&["--bogus=1"]), "unknown option --bogus=1"),
            (s(&["--json=x"]), "unknown option --json=x"),
            (s(&["--json="]), "unknown option --json="),
            (s(&["-qh"]), "unknown option -qh"),
            (s(&["-q=x"]), "unknown option -q=x"),
            (s(&["-x"]), "unknown option -x"),
            (s(&["-x=1"]), "unknown option -x=1"),
            (s(&["-="]), "unknown option -="),
            (s(&["--=x"]), "unknown option --=x"),
            (s(&["img", "--keep"]), "--keep needs a value"),
            (
                vec![bad(b"--server"), bad(b"\xff")],
                "--server needs a value",
            ),
            (vec![bad(b"--st\xffre")], "arguments must be UTF-8"),
            (vec![bad(b"-\xff")], "arguments must be UTF-8"),
            (vec![bad(b"a"), bad(b"\xff")], "arguments must be UTF-8"),
            (vec![bad(b"--store=\xff")], "arguments must be UTF-8"),
            (vec![bad(b"--"), bad(b"\xff")], "arguments must be UTF-8"),
        ] {
            assert_eq!(err(raw.clone()), want, "{raw:?}");
        }
        let a = parse_args(&s(&[
            "--store",
            "--",
            "-",
            "--token",
            "-abc",
            "--server=",
            "-q",
            "--",
            "-q",
            "--x",
        ]))
        .unwrap();
        assert_eq!(a.value("--store"), Some("--"));
        assert_eq!(a.value("--token"), Some("-abc"));
        assert_eq!(a.value("--server"), Some(""));
        assert_eq!(a.positional, vec!["-", "-q", "--x"]);
        assert!(a.has(&["-q"]) && !a.has(&["--x"]));
        let a = parse_args(&s(&["--keep=1", "--keep", "2", "--platform=a=b"])).unwrap();
        assert_eq!(a.value("--keep"), Some("2"));
        assert_eq!(a.value("--platform"), Some("a=b"));
    }
}
