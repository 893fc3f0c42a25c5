//! What the sandbox does with each import a component declares.
//!
//! Toolchains import more than a model uses: componentize-py imports all of
//! WASI 0.2, a Rust std build imports clocks, random, filesystem and CLI
//! streams. The host links every WASI 0.2 interface (so such models load)
//! but grants nothing real; this table says, per interface, what the model
//! will see instead, so `riskhost model inspect` can tell a quant before
//! production does. It mirrors `engine/sandbox.rs`; keep the two in step.

use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

/// How the sandbox answers one import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Treatment {
    /// Works as the model expects (e.g. stream plumbing).
    Provided,
    /// Linked, but answers with a deterministic stand-in (frozen clocks,
    /// seeded randomness, an empty filesystem, captured output).
    Virtualised,
    /// Linked, but every use fails (network).
    Denied,
    /// Not linked at all: the component cannot load.
    Unsupported,
}

impl Treatment {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Treatment::Provided => "provided",
            Treatment::Virtualised => "virtualised",
            Treatment::Denied => "denied",
            Treatment::Unsupported => "unsupported",
        }
    }
}

/// One import of a component and what the sandbox does with it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ImportReport {
    /// The import's name, e.g. `wasi:clocks/wall-clock@0.2.0`.
    pub(crate) name: String,
    /// `instance`, `function`, `type`, `resource`, `module` or `component`.
    pub(crate) kind: &'static str,
    pub(crate) treatment: Treatment,
    /// What the model sees, in one line.
    pub(crate) note: &'static str,
}

/// The imports of a compiled component with the sandbox's treatment of each.
pub(crate) fn imports(engine: &Engine, component: &Component) -> Vec<ImportReport> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, item)| {
            let (treatment, note) = treatment(name);
            ImportReport {
                name: name.to_owned(),
                kind: kind(&item.ty),
                treatment,
                note,
            }
        })
        .collect()
}

/// The export names of a compiled component.
pub(crate) fn exports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}

fn kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::ComponentFunc(_) | ComponentItem::CoreFunc(_) => "function",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
    }
}

/// The sandbox's treatment of an import, by interface name (version ignored:
/// the linker accepts any 0.2.x of the interfaces it provides).
pub(crate) fn treatment(name: &str) -> (Treatment, &'static str) {
    let (interface, version) = name.split_once('@').unwrap_or((name, ""));
    if interface.starts_with("wasi:") && !version.is_empty() && !version.starts_with("0.2.") {
        return (
            Treatment::Unsupported,
            "the sandbox links WASI 0.2 only: build against WASI 0.2 (wasm32-wasip2)",
        );
    }
    match interface {
        "wasi:io/error" | "wasi:io/poll" | "wasi:io/streams" => (
            Treatment::Provided,
            "stream and polling plumbing; every wait ends at the call's deadline",
        ),
        "wasi:clocks/wall-clock" => (
            Treatment::Virtualised,
            "frozen at midnight UTC of the request's as-of date",
        ),
        "wasi:clocks/monotonic-clock" => (
            Treatment::Virtualised,
            "frozen for reads; a sleep waits in real time, at most until the deadline",
        ),
        "wasi:random/random" | "wasi:random/insecure" | "wasi:random/insecure-seed" => (
            Treatment::Virtualised,
            "seeded from the request's content: reproducible, not secret",
        ),
        "wasi:filesystem/types" | "wasi:filesystem/preopens" => (
            Treatment::Virtualised,
            "no preopened directories: the model sees no files",
        ),
        "wasi:cli/environment" => (
            Treatment::Virtualised,
            "no environment variables and no arguments",
        ),
        "wasi:cli/stdin" => (Treatment::Virtualised, "empty"),
        "wasi:cli/stdout" | "wasi:cli/stderr" => (
            Treatment::Virtualised,
            "captured (first 8 KiB per call) into the host's log",
        ),
        "wasi:cli/exit" => (
            Treatment::Provided,
            "exiting ends the call as a failure (model_trap)",
        ),
        "wasi:cli/terminal-input"
        | "wasi:cli/terminal-output"
        | "wasi:cli/terminal-stdin"
        | "wasi:cli/terminal-stdout"
        | "wasi:cli/terminal-stderr" => (Treatment::Virtualised, "never a terminal"),
        "wasi:sockets/network"
        | "wasi:sockets/instance-network"
        | "wasi:sockets/tcp"
        | "wasi:sockets/tcp-create-socket"
        | "wasi:sockets/udp"
        | "wasi:sockets/udp-create-socket"
        | "wasi:sockets/ip-name-lookup" => (
            Treatment::Denied,
            "no network: connecting, binding and name lookups fail",
        ),
        _ if interface.starts_with("riskhost:model/") => {
            (Treatment::Provided, "the contract's own types")
        }
        _ => (
            Treatment::Unsupported,
            "the sandbox does not provide this: a model may import only WASI 0.2 interfaces",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasi_interfaces_are_classified_whatever_their_patch_version() {
        assert_eq!(treatment("wasi:sockets/tcp@0.2.3").0, Treatment::Denied);
        assert_eq!(
            treatment("wasi:clocks/wall-clock@0.2.0").0,
            Treatment::Virtualised
        );
        assert_eq!(
            treatment("wasi:filesystem/preopens@0.2.6").0,
            Treatment::Virtualised
        );
        assert_eq!(
            treatment("wasi:random/random@0.2.0").0,
            Treatment::Virtualised
        );
        assert_eq!(treatment("wasi:io/streams@0.2.0").0, Treatment::Provided);
    }

    #[test]
    fn anything_outside_wasi_0_2_is_unsupported() {
        assert_eq!(
            treatment("wasi:http/outgoing-handler@0.2.0").0,
            Treatment::Unsupported
        );
        assert_eq!(treatment("acme:pricing/curves").0, Treatment::Unsupported);
        assert_eq!(
            treatment("wasi:clocks/wall-clock@0.3.0").0,
            Treatment::Unsupported
        );
    }
}
