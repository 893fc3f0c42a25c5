//! The shape pre-check: what one function may cost before it is compiled.
//!
//! Cranelift's time and memory grow much faster than a function's size
//! when loops nest deeply around many live locals: a 5 KB function of 300
//! nested loops over 300 locals takes a minute to compile. Compilation
//! cannot be interrupted, so before any byte reaches it every function body
//! of every core module in the component is measured in one linear pass
//! (`wasmparser`, no validation) and one that exceeds a limit is refused
//! with a message naming the limit. The limits sit far above what real
//! models need (docs/sandbox.md lists both); the compile budget
//! (`riskhost_models::Compilation`) bounds whatever still slips through.

use wasmparser::{Encoding, Operator, Parser, Payload};

/// What one function body may be; see docs/sandbox.md ("Load time").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeLimits {
    /// Bytes of one function body (wasmtime's own cap is 7,654,321).
    pub max_function_bytes: usize,
    /// Declared locals of one function (wasmtime's own cap is 50,000).
    pub max_locals: u64,
    /// Nesting depth of `block`, `loop`, `if` and `try` in one function.
    pub max_control_depth: usize,
    /// Nesting depth of `loop`s alone: what makes compilation explode.
    pub max_loop_depth: usize,
}

impl Default for ShapeLimits {
    fn default() -> Self {
        ShapeLimits {
            max_function_bytes: 4 << 20,
            max_locals: 20_000,
            max_control_depth: 10_000,
            max_loop_depth: 64,
        }
    }
}

/// The largest of each measure over a component's functions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShapeStats {
    /// Core modules, nested ones included.
    pub modules: usize,
    pub functions: usize,
    pub largest_function_bytes: usize,
    pub most_locals: u64,
    pub deepest_control: usize,
    pub deepest_loops: usize,
}

/// Measures every function body of `bytes` (a component or a core module)
/// and refuses the first one over `limits`. Bytes that do not parse pass:
/// compilation validates them and reports the error with wasmtime's words.
pub(crate) fn check(bytes: &[u8], limits: &ShapeLimits) -> Result<ShapeStats, String> {
    let mut stats = ShapeStats::default();
    let mut body_index = 0;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return Ok(stats);
        };
        match payload {
            Payload::Version {
                encoding: Encoding::Module,
                ..
            } => {
                stats.modules += 1;
                body_index = 0;
            }
            Payload::CodeSectionEntry(body) => {
                let Ok(shape) = measure(&body) else {
                    return Ok(stats);
                };
                stats.functions += 1;
                stats.largest_function_bytes = stats.largest_function_bytes.max(shape.bytes);
                stats.most_locals = stats.most_locals.max(shape.locals);
                stats.deepest_control = stats.deepest_control.max(shape.control_depth);
                stats.deepest_loops = stats.deepest_loops.max(shape.loop_depth);
                // Core modules are numbered from 0 as they appear.
                let which = || {
                    format!(
                        "function body {body_index} of core module {} (at byte offset {})",
                        stats.modules.saturating_sub(1),
                        body.range().start
                    )
                };
                if shape.bytes > limits.max_function_bytes {
                    return Err(format!(
                        "{} is {} bytes; the limit is {} bytes",
                        which(),
                        shape.bytes,
                        limits.max_function_bytes
                    ));
                }
                if shape.locals > limits.max_locals {
                    return Err(format!(
                        "{} declares {} locals; the limit is {}",
                        which(),
                        shape.locals,
                        limits.max_locals
                    ));
                }
                if shape.loop_depth > limits.max_loop_depth {
                    return Err(format!(
                        "{} nests loops {} deep; the limit is {}",
                        which(),
                        shape.loop_depth,
                        limits.max_loop_depth
                    ));
                }
                if shape.control_depth > limits.max_control_depth {
                    return Err(format!(
                        "{} nests blocks {} deep; the limit is {}",
                        which(),
                        shape.control_depth,
                        limits.max_control_depth
                    ));
                }
                body_index += 1;
            }
            _ => {}
        }
    }
    Ok(stats)
}

struct FunctionShape {
    bytes: usize,
    locals: u64,
    control_depth: usize,
    loop_depth: usize,
}

fn measure(body: &wasmparser::FunctionBody<'_>) -> wasmparser::Result<FunctionShape> {
    let mut locals = 0u64;
    for local in body.get_locals_reader()? {
        locals = locals.saturating_add(u64::from(local?.0));
    }
    // One entry per open block: whether it is a loop. The function body
    // itself is the outermost block and closes with the last `end`.
    let mut open: Vec<bool> = Vec::new();
    let (mut loops, mut control_depth, mut loop_depth) = (0usize, 0usize, 0usize);
    let mut operators = body.get_operators_reader()?;
    while !operators.eof() {
        match operators.read()? {
            Operator::Block { .. }
            | Operator::If { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. } => open.push(false),
            Operator::Loop { .. } => {
                open.push(true);
                loops += 1;
                loop_depth = loop_depth.max(loops);
            }
            Operator::End => {
                if open.pop() == Some(true) {
                    loops -= 1;
                }
            }
            _ => continue,
        }
        control_depth = control_depth.max(open.len());
    }
    Ok(FunctionShape {
        bytes: body.range().len(),
        locals,
        control_depth,
        loop_depth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every model this repository builds, measured: they must pass, and the
    /// numbers are what docs/sandbox.md quotes. Files not built are skipped.
    #[test]
    fn real_models_pass_the_shape_check_with_room_to_spare() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut seen = 0;
        for dir in ["plugins/dist", "tests/plugins/dist", "examples/python/dist"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
                if path.extension().is_none_or(|e| e != "wasm") {
                    continue;
                }
                let bytes = std::fs::read(&path).expect("read model");
                let stats = check(&bytes, &ShapeLimits::default())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                eprintln!("{}: {stats:?}", path.display());
                seen += 1;
            }
        }
        eprintln!("measured {seen} models");
    }

    /// A core module of one function: `loops` nested loops around `blocks`
    /// nested blocks, with `locals` i64 locals.
    fn module(loops: usize, blocks: usize, locals: u32) -> Vec<u8> {
        let mut code = Vec::new();
        leb(1, &mut code); // one local declaration
        leb(locals as usize, &mut code);
        code.push(0x7e);
        for _ in 0..loops {
            code.extend_from_slice(&[0x03, 0x40]);
        }
        for _ in 0..blocks {
            code.extend_from_slice(&[0x02, 0x40]);
        }
        code.extend(std::iter::repeat_n(0x0b, loops + blocks + 1));
        let mut body = Vec::new();
        leb(code.len(), &mut body);
        body.extend(code);
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0, 3, 2, 1, 0]);
        let mut section = vec![1];
        section.extend(body);
        m.push(10);
        leb(section.len(), &mut m);
        m.extend(section);
        m
    }

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

    #[test]
    fn each_limit_is_named_when_exceeded() {
        let limits = ShapeLimits::default();
        let stats = check(&module(3, 5, 7), &limits).expect("a small function passes");
        assert_eq!(
            (
                stats.deepest_loops,
                stats.deepest_control,
                stats.most_locals
            ),
            (3, 8, 7)
        );
        let loops = check(&module(65, 0, 1), &limits).unwrap_err();
        assert!(
            loops.contains("nests loops 65 deep; the limit is 64"),
            "{loops}"
        );
        let blocks = check(&module(0, 10_001, 1), &limits).unwrap_err();
        assert!(
            blocks.contains("nests blocks 10001 deep; the limit is 10000"),
            "{blocks}"
        );
        let locals = check(&module(0, 0, 20_001), &limits).unwrap_err();
        assert!(
            locals.contains("declares 20001 locals; the limit is 20000"),
            "{locals}"
        );
        let tight = ShapeLimits {
            max_function_bytes: 10,
            ..limits
        };
        let size = check(&module(0, 10, 1), &tight).unwrap_err();
        assert!(
            size.contains("function body 0 of core module 0")
                && size.contains("the limit is 10 bytes"),
            "{size}"
        );
        assert!(
            check(b"\0asm garbage", &limits).is_ok(),
            "left to compilation"
        );
    }
}
