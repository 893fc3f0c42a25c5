//! riskhost-oci: models as OCI artifacts, the way the WebAssembly ecosystem
//! ships components (wkg, oras, Spin, wasmCloud): an OCI image manifest
//! whose config is `application/vnd.wasm.config.v0+json` and whose one
//! layer is the component (`application/wasm`), in any registry a company
//! runs (distribution, Harbor, GHCR, ECR, …), through `oci-client`.
//!
//! - [`OciClient::push`]: the component and, when it has one, its ed25519
//!   detached signature as a second artifact that refers to it (`subject`,
//!   OCI 1.1) and is also tagged `sha256-<manifest hex>.sig`, the fallback
//!   for registries without the referrers API (distribution 2.8).
//! - [`OciClient::pull`]: a reference (a tag is resolved to its manifest
//!   digest once, here) → the component bytes, checked against the layer
//!   digest, bounded by `--max-component-mib` before the download, and the
//!   signature if one was pushed. Older `application/vnd.wasm.content.layer.v1+wasm`
//!   layers are read too.
//!
//! The crate's API is what this file re-exports. Errors are [`OciError`],
//! each saying what went wrong in words an API client can act on.
//!
//! May not: compile, validate or activate anything (the host does, through
//! the same path as an upload), or know about HTTP statuses.

mod client;

pub use self::client::{OciAuth, OciClient, OciError, OciSettings, Pulled, Pushed};
