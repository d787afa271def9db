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

pub(super) fn parse_args(raw: &[OsString]) -> Result<Args> {
    let mut a = Args::default();
    let mut it = raw.iter();
    let mut only_positional = false;
    while let Some(arg) = it.next() {
        let arg = arg
            .to_str()
            .ok_or_else(|| usage("arguments must be UTF-8"))?
            .to_string();
        if only_positional || !arg.starts_with('-') || arg == "-" {
            a.positional.push(arg);
            continue;
        }
        if arg == "--" {
            only_positional = true;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        if VALUE_FLAGS.contains(&name.as_str()) {
            let v = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .and_then(|v| v.to_str())
                    .ok_or_else(|| usage(format!("{name} needs a value")))?
                    .to_string(),
            };
            a.flags.push((name, Some(v)));
        } else if BOOL_FLAGS.contains(&name.as_str()) && inline.is_none() {
            a.flags.push((name, None));
        } else {
            return Err(usage(format!("unknown option {arg}")));
        }
    }
    Ok(a)
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
}
