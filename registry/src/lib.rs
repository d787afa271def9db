//! layerlink registry (library).
