//! Component sizes: the bytes of each model's `.wasm` file as loaded (a
//! reading, not a timing; a regression shows up as growth between runs).

use super::Context;
use crate::report::Row;

const SCENARIO: &str = "component size";

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    Ok(ctx
        .models
        .iter()
        .map(|m| {
            let shown = m
                .path
                .strip_prefix(&ctx.root)
                .unwrap_or(&m.path)
                .display()
                .to_string();
            Row::reading(
                SCENARIO,
                m.name.to_owned(),
                m.size_bytes as f64 / 1024.0,
                "KiB",
            )
            .note(format!(
                "{shown}: {} bytes (profile `plugin`)",
                m.size_bytes
            ))
        })
        .collect())
}
