//! `layerlink-registry` binary. OWNER: registry-oci helper.
fn main() {}
