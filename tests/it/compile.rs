//! End-to-end tests of the compile budget and the shape pre-check (issue
//! 22, defect 4): a component that is slow or huge to compile fails to load
//! with a message naming the limit it met, one whose functions are shaped
//! to be costly is refused before compiling, and neither delays the other
//! models of the directory.
//!
//! The costly components are built here: a real model (`var-parametric`)
//! plus one extra core module holding a function that is never called but
//! must still be compiled, of `loops` nested loops around `locals` live i64
//! locals (Cranelift's cost grows much faster than the function's few KB).

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{Server, TempDir, failure_of, plugins_dir, wait_until};
use serde_json::{Value, json};

/// Far beyond any budget used here: a load not decided after this long
/// means the budget failed to stop it.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// The cost that is compiled but never run: 60 nested loops over 6,000
/// locals, within every shape limit, takes Cranelift about 30 s and 400 MB
/// of RSS on the 2-core test machine (measured in-process).
const SLOW: (usize, u32) = (60, 6_000);

fn leb(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb(payload.len(), out);
    out.extend_from_slice(payload);
}

/// A core module of one function `() -> ()`: `loops` nested loops, each
/// branching back on one of the locals, around a body that updates every
/// one of `locals` i64 locals from its neighbour (so all are live across
/// every loop header), then `blocks` empty nested blocks.
fn costly_module(loops: usize, locals: u32, blocks: usize) -> Vec<u8> {
    let locals = locals.max(1) as usize;
    let mut code = Vec::new();
    leb(1, &mut code);
    leb(locals, &mut code);
    code.push(0x7e); // i64
    code.extend(std::iter::repeat_n([0x03, 0x40], loops).flatten()); // loop
    for j in 0..locals {
        code.push(0x20); // local.get j
        leb(j, &mut code);
        code.push(0x20); // local.get j+1
        leb((j + 1) % locals, &mut code);
        code.extend_from_slice(&[0x7c, 0x21]); // i64.add; local.set j
        leb(j, &mut code);
    }
    for depth in 0..loops {
        code.push(0x20); // local.get; i32.wrap_i64; br_if 0; end
        leb(depth % locals, &mut code);
        code.extend_from_slice(&[0xa7, 0x0d, 0x00, 0x0b]);
    }
    code.extend(std::iter::repeat_n([0x02, 0x40], blocks).flatten()); // block
    code.extend(std::iter::repeat_n(0x0b, blocks + 1)); // end … end (body)
    let mut body = Vec::new();
    leb(code.len(), &mut body);
    body.extend(code);

    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module); // one type: () -> ()
    section(3, &[1, 0], &mut module); // one function of it
    let mut bodies = vec![1];
    bodies.extend(body);
    section(10, &bodies, &mut module);
    module
}

/// `var-parametric` with `module` appended as a core module section: the
/// same model, plus code that is compiled and never instantiated.
fn var_parametric_with(module: &[u8]) -> Vec<u8> {
    let path = plugins_dir().join("var-parametric.wasm");
    let mut component = std::fs::read(&path).expect("read var-parametric.wasm");
    section(1, module, &mut component);
    component
}

/// A plugins directory of `var-historical`, `es-historical` and `extra`
/// files (name, bytes).
fn plugins_with_extra(extra: &[(&str, Vec<u8>)]) -> TempDir {
    let dir = TempDir::new("compile-plugins");
    for model in ["var-historical", "es-historical"] {
        let file = format!("{model}.wasm");
        std::fs::copy(plugins_dir().join(&file), dir.path().join(&file)).expect("copy model");
    }
    for (name, bytes) in extra {
        std::fs::write(dir.path().join(name), bytes).expect("write component");
    }
    dir
}

fn path_arg(dir: &Path) -> &str {
    dir.to_str().unwrap_or_default()
}

fn score(server: &Server, model: &str) -> (u16, Value) {
    server.post(
        "/v1/score",
        &json!({"model": model, "portfolio": {"id": "p", "positions": [{"instrument": "SPX", "quantity": 1.0}]}}),
    )
}

fn model_names(server: &Server) -> Vec<String> {
    let (_, body) = server.get("/v1/models");
    body["models"]
        .as_array()
        .map(|models| {
            models
                .iter()
                .filter_map(|m| m["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[track_caller]
fn assert_others_serve(server: &Server) {
    assert_eq!(model_names(server), ["es-historical", "var-historical"]);
    for model in ["var-historical", "es-historical"] {
        let (status, body) = score(server, model);
        assert_eq!(status, 200, "{model}: {body}");
    }
}

#[test]
fn a_component_past_the_time_budget_fails_naming_it_and_the_others_serve() {
    let (loops, locals) = SLOW;
    let plugins = plugins_with_extra(&[(
        "slow.wasm",
        var_parametric_with(&costly_module(loops, locals, 0)),
    )]);
    let server = Server::start_with(&[
        "--plugins",
        path_arg(plugins.path()),
        "--compile-timeout-ms",
        "8000",
    ]);
    // Ready means every file has loaded or failed: the failure is there.
    let error = failure_of(&server, "slow.wasm").unwrap_or_else(|| {
        panic!(
            "no load failure for slow.wasm once ready; models: {:?}",
            model_names(&server)
        )
    });
    assert!(
        error.contains("compiling took longer than the compile budget of 8000 ms"),
        "{error}"
    );
    assert_others_serve(&server);
}

#[test]
fn a_component_past_the_memory_budget_fails_naming_it_and_the_others_serve() {
    let (loops, locals) = SLOW;
    let plugins = plugins_with_extra(&[(
        "hungry.wasm",
        var_parametric_with(&costly_module(loops, locals, 0)),
    )]);
    let server = Server::start_with(&[
        "--plugins",
        path_arg(plugins.path()),
        "--compile-memory-mib",
        "128",
        "--compile-timeout-ms",
        "100000",
    ]);
    let error = failure_of(&server, "hungry.wasm").unwrap_or_else(|| {
        panic!(
            "no load failure for hungry.wasm once ready; models: {:?}",
            model_names(&server)
        )
    });
    assert!(
        error.contains("compiling needed more than the compile budget of 128 MiB"),
        "{error}"
    );
    assert_others_serve(&server);
}

#[test]
fn functions_shaped_to_be_costly_are_refused_before_compiling() {
    let plugins = plugins_with_extra(&[
        // Cheap to compile, but past the limits: refused on shape alone.
        (
            "loops.wasm",
            var_parametric_with(&costly_module(100, 10, 0)),
        ),
        (
            "blocks.wasm",
            var_parametric_with(&costly_module(0, 1, 12_000)),
        ),
        (
            "locals.wasm",
            var_parametric_with(&costly_module(1, 30_000, 0)),
        ),
    ]);
    let server = Server::start_with(&["--plugins", path_arg(plugins.path())]);
    let error_of = |file: &str| {
        failure_of(&server, file).unwrap_or_else(|| {
            panic!(
                "no load failure for {file}; models: {:?}",
                model_names(&server)
            )
        })
    };
    for (file, limit) in [
        ("loops.wasm", "nests loops 100 deep; the limit is 64"),
        ("blocks.wasm", "nests blocks 12000 deep; the limit is 10000"),
        ("locals.wasm", "declares 30000 locals; the limit is 20000"),
    ] {
        let error = error_of(file);
        assert!(
            error.contains("a function is too costly to compile")
                && error.contains("function body 0 of core module")
                && error.contains(limit),
            "{file}: {error}"
        );
    }
    assert_others_serve(&server);
}

#[test]
fn a_component_slow_to_compile_does_not_delay_the_others() {
    let (loops, locals) = SLOW;
    // First by name, so a one-at-a-time start-up would compile it first.
    let plugins = plugins_with_extra(&[(
        "aaa-slow.wasm",
        var_parametric_with(&costly_module(loops, locals, 0)),
    )]);
    // The default budget (60 s): the slow file is still compiling while
    // the others are served.
    let server = Server::start_unready(&["--plugins", path_arg(plugins.path())]);
    wait_until("the other models to be served", HANG_GUARD, || {
        score(&server, "var-historical").0 == 200 && score(&server, "es-historical").0 == 200
    });
    let names = model_names(&server);
    assert!(
        !names.iter().any(|n| n == "var-parametric")
            && failure_of(&server, "aaa-slow.wasm").is_none(),
        "the slow file was decided before the others were served (models {names:?}, failure {:?})",
        failure_of(&server, "aaa-slow.wasm")
    );
    // Ready waits for every file to load or fail, and the slow one has
    // done neither yet.
    assert_eq!(server.get("/readyz").0, 503);
    assert_others_serve(&server);
}
