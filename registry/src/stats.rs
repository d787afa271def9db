//! The `stats` command. OWNER: registry-oci helper (numbers on files and
//! objects come from `index::dedup_stats`, owned by the registry-dedup helper).
