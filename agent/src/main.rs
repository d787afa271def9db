//! `layerlink-agent`: see `layerlink_agent::cli` (and `--help`).

fn main() {
    std::process::exit(layerlink_agent::cli::main(std::env::args_os().collect()));
}
