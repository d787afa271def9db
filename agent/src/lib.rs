//! layerlink device agent (library).
