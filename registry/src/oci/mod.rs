//! OCI distribution API handlers. OWNER: registry-oci helper.
