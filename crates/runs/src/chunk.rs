//! One chunk, the same on every backend: how a submission is cut into
//! chunks, how a chunk is scored through the batch engine, the error cells
//! of a quarantined chunk, and the result lines both backends store.

use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;

use super::{CellCounts, ChunkFailure, RunError, RunSpec};
use riskhost_scoring::{
    BatchCell, BatchRequest, CellError, CellOutcome, PortfolioInput, ScoringService,
};

/// A planned chunk: its number, the position of its first portfolio in the
/// run, and its portfolios as JSON lines.
pub(crate) struct PlannedChunk {
    pub number: u64,
    pub first_index: u64,
    pub portfolios: u32,
    pub lines: Vec<u8>,
}

/// Reads a submission's portfolios and hands each full chunk to `store` as
/// soon as it is cut, so at most one chunk is held; answers how many
/// portfolios and chunks there were. Past `max_portfolios` it stops with
/// [`RunError::TooManyPortfolios`]; with none, [`RunError::EmptySelection`].
pub(crate) async fn plan_chunks<F, Fut>(
    mut portfolios: BoxStream<'static, Result<PortfolioInput, RunError>>,
    chunk_size: usize,
    max_portfolios: u64,
    mut store: F,
) -> Result<(u64, u64), RunError>
where
    F: FnMut(PlannedChunk) -> Fut,
    Fut: Future<Output = Result<(), RunError>>,
{
    let chunk_size = chunk_size.max(1);
    let (mut count, mut chunks) = (0u64, 0u64);
    let mut lines = Vec::new();
    let mut in_chunk = 0usize;
    while let Some(portfolio) = portfolios.next().await {
        let portfolio = portfolio?;
        count += 1;
        if count > max_portfolios {
            return Err(RunError::TooManyPortfolios {
                max: max_portfolios,
            });
        }
        serde_json::to_writer(&mut lines, &portfolio).map_err(|e| RunError::store("encode", e))?;
        lines.push(b'\n');
        in_chunk += 1;
        if in_chunk == chunk_size {
            store(PlannedChunk {
                number: chunks,
                first_index: chunks * chunk_size as u64,
                portfolios: in_chunk as u32,
                lines: std::mem::take(&mut lines),
            })
            .await?;
            chunks += 1;
            in_chunk = 0;
        }
    }
    if in_chunk > 0 {
        store(PlannedChunk {
            number: chunks,
            first_index: chunks * chunk_size as u64,
            portfolios: in_chunk as u32,
            lines,
        })
        .await?;
        chunks += 1;
    }
    if count == 0 {
        return Err(RunError::EmptySelection);
    }
    Ok((count, chunks))
}

/// A chunk's portfolios from its JSON lines; `what` names the source in
/// the error.
pub(crate) fn parse_portfolios(lines: &[u8], what: &str) -> Result<Vec<PortfolioInput>, String> {
    lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| serde_json::from_slice(line).map_err(|e| format!("{what}: {e}")))
        .collect()
}

/// A scored chunk: its cells, positioned in the run, and their counts.
pub(crate) struct ScoredChunk {
    pub cells: Vec<BatchCell>,
    pub counts: CellCounts,
}

/// Scores `portfolios` (the chunk starting at `first_index`) with the
/// run's pinned models through the batch engine: one prefetch, the memo,
/// the bulkheads. An invalid portfolio is a failed cell; an error of the
/// whole batch (a pinned version gone, the data source down) is the
/// chunk's failure. Its scores are recorded as the request named by the
/// run's id (path `run`), so `POST /v1/replay` with the run id replays them.
pub(crate) async fn score_chunk(
    scoring: &ScoringService,
    run: &str,
    spec: &RunSpec,
    portfolios: Vec<PortfolioInput>,
    first_index: u64,
) -> Result<ScoredChunk, String> {
    let request = BatchRequest {
        models: spec
            .digests
            .iter()
            .map(|(name, digest)| format!("{name}@{digest}"))
            .collect(),
        portfolios,
        params: spec.params.clone(),
        as_of: Some(spec.as_of),
        breakdown: true,
    };
    let response = scoring
        .score_run_chunk(run, request)
        .await
        .map_err(|e| e.to_string())?;
    let mut counts = CellCounts::default();
    let mut cells = response.results;
    for cell in &mut cells {
        cell.portfolio_index += first_index as usize;
        match cell.outcome {
            CellOutcome::Score(_) => counts.ok += 1,
            CellOutcome::Error { .. } => counts.failed += 1,
        }
    }
    Ok(ScoredChunk { cells, counts })
}

/// The cells of a quarantined chunk: a `chunk_failed` error for each of
/// its portfolios × models, so no portfolio of the run goes missing.
pub(crate) fn quarantined_cells(
    spec: &RunSpec,
    portfolios: &[PortfolioInput],
    first_index: u64,
    failure: &ChunkFailure,
) -> Vec<BatchCell> {
    let message = format!(
        "chunk {} failed {} times; the last time: {}",
        failure.chunk, failure.deliveries, failure.reason
    );
    let mut cells = Vec::with_capacity(portfolios.len() * spec.digests.len());
    for (offset, portfolio) in portfolios.iter().enumerate() {
        for model in spec.digests.keys() {
            cells.push(BatchCell {
                portfolio_index: first_index as usize + offset,
                portfolio_id: portfolio.id.clone(),
                model: model.clone(),
                outcome: CellOutcome::Error {
                    error: CellError {
                        code: "chunk_failed",
                        message: message.clone(),
                    },
                },
            });
        }
    }
    cells
}

/// What the run reports of a quarantined chunk.
pub(crate) fn chunk_failure(
    chunk: u64,
    first_index: u64,
    portfolios: &[PortfolioInput],
    reason: String,
    deliveries: u32,
) -> ChunkFailure {
    ChunkFailure {
        chunk,
        first_portfolio_index: first_index,
        portfolios: portfolios.len() as u64,
        portfolio_ids: portfolios.iter().filter_map(|p| p.id.clone()).collect(),
        reason,
        deliveries,
    }
}

/// One result line: the batch API's cell plus `run_id`.
#[derive(Serialize)]
struct ResultLine<'a> {
    run_id: &'a str,
    #[serde(flatten)]
    cell: &'a BatchCell,
}

/// Appends `cell`'s result line (with its newline) to `out`.
pub(crate) fn append_result_line(
    out: &mut Vec<u8>,
    run_id: &str,
    cell: &BatchCell,
) -> Result<(), RunError> {
    serde_json::to_writer(&mut *out, &ResultLine { run_id, cell })
        .map_err(|e| RunError::store("encode a result line", e))?;
    out.push(b'\n');
    Ok(())
}

/// The cells' result lines, one per cell.
pub(crate) fn result_lines(run_id: &str, cells: &[BatchCell]) -> Result<Vec<u8>, RunError> {
    let mut out = Vec::with_capacity(cells.len() * 256);
    for cell in cells {
        append_result_line(&mut out, run_id, cell)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_id(id: &str) -> Result<PortfolioInput, RunError> {
        Ok(PortfolioInput {
            id: Some(id.to_owned()),
            positions: None,
        })
    }

    #[tokio::test]
    async fn a_submission_is_cut_into_numbered_chunks_holding_every_portfolio_once() {
        let ids: Vec<String> = (0..7).map(|i| format!("p{i}")).collect();
        let stream = futures::stream::iter(ids.clone().into_iter().map(|id| by_id(&id))).boxed();
        let mut chunks = Vec::new();
        let (count, total) = plan_chunks(stream, 3, 100, |chunk| {
            chunks.push((
                chunk.number,
                chunk.first_index,
                chunk.portfolios,
                chunk.lines,
            ));
            std::future::ready(Ok(()))
        })
        .await
        .expect("planned");
        assert_eq!((count, total), (7, 3));
        let numbers: Vec<(u64, u64, u32)> = chunks.iter().map(|c| (c.0, c.1, c.2)).collect();
        assert_eq!(numbers, [(0, 0, 3), (1, 3, 3), (2, 6, 1)]);
        let read: Vec<String> = chunks
            .iter()
            .flat_map(|c| parse_portfolios(&c.3, "chunk").expect("lines"))
            .filter_map(|p| p.id)
            .collect();
        assert_eq!(read, ids);
    }

    #[tokio::test]
    async fn an_empty_or_oversized_submission_is_refused() {
        let empty = futures::stream::iter(Vec::new()).boxed();
        let refused = plan_chunks(empty, 3, 100, |_| std::future::ready(Ok(()))).await;
        assert!(
            matches!(refused, Err(RunError::EmptySelection)),
            "{refused:?}"
        );
        let many = futures::stream::iter((0..5).map(|i| by_id(&i.to_string()))).boxed();
        let refused = plan_chunks(many, 2, 4, |_| std::future::ready(Ok(()))).await;
        assert!(
            matches!(refused, Err(RunError::TooManyPortfolios { max: 4 })),
            "{refused:?}"
        );
    }
}
