//! Flag parsing and number formatting shared by the harness binaries
//! (`layerlink-faults`, `layerlink-vmcut`, `layerlink-bench`).

/// The value after flag `name` in `args`, if any.
pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The number after flag `name`, or `default`; panics on a non-number.
pub fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name)
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{name} {s:?}: not a number"))
        })
        .unwrap_or(default)
}

/// `12.34 MiB`.
pub fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0))
}
