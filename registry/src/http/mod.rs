//! The HTTP layer: routes, handlers, listening. Everything below it
//! ([`crate::store`], [`crate::ingest`], [`crate::sync`], [`crate::edit`])
//! is callable without HTTP.
//!
//! | module | routes / concern |
//! |---|---|
//! | [`oci`] | `/v2/…`: the OCI distribution API (push, pull, tags, catalog) |
//! | [`sync`] | `POST /layerlink/v1/{plan,archive,objects,report}`: device sync |
//! | [`edit`] | `POST /layerlink/v1/edit`: in-place image edit for publishers |
//! | [`fleet`] | `GET /layerlink/v1/fleet`: devices, holdings, last syncs (publishers) |
//! | [`ops`] | `/healthz`, `/readyz`, `/metrics` (operators) |
//! | [`reload`] | swapping in a config reloaded on `SIGHUP` |
//! | [`metrics`] | Prometheus metric names, the recorder, the route label |
//! | [`server`] | router assembly ([`server::app`]), listen address checks, serving |
//! | [`tls`] | HTTPS acceptor from the config's `[tls]` |
//! | [`state`] | [`state::AppState`], what every handler gets |

pub mod edit;
pub mod fleet;
pub mod metrics;
pub mod oci;
pub mod ops;
pub mod reload;
pub mod server;
pub mod state;
pub mod sync;
pub mod tls;
