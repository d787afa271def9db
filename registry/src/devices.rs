//! Per-device holdings record and the `devices` command. OWNER: registry-dedup helper.

use crate::storage::Storage;

/// Print every device's record (`layerlink-registry devices`).
pub fn print_devices(storage: &Storage, json: bool) -> anyhow::Result<()> {
    let _ = (storage, json);
    Ok(())
}
