//! Planning: the portfolios a selection names, as a stream, and the pinning
//! of a run's models to the digests they have at submission.

use std::collections::BTreeMap;

use futures::StreamExt;
use futures::stream::BoxStream;

use super::{RunError, RunRequest, RunSpec, Selection};
use riskhost_scoring::{PortfolioInput, ScoringService};

/// The portfolios `selection` names, one at a time. `{"all": true}` lists
/// the data source's stored portfolios by id; each is read when its chunk
/// is scored, with the batch engine's one prefetch.
pub async fn portfolio_stream(
    selection: Selection,
    scoring: &ScoringService,
) -> Result<BoxStream<'static, Result<PortfolioInput, RunError>>, RunError> {
    let by_id = |id: String| {
        Ok(PortfolioInput {
            id: Some(id),
            positions: None,
        })
    };
    Ok(match selection {
        Selection::All(false) => {
            return Err(RunError::Invalid(
                "`portfolios`: `{\"all\": false}` selects nothing; give `{\"all\": true}`, `ids` or `inline`".into(),
            ));
        }
        Selection::All(true) => {
            let ids = scoring.market().portfolio_ids().await.map_err(|e| {
                RunError::Unavailable(format!("cannot list the stored portfolios: {e}"))
            })?;
            futures::stream::iter(ids.into_iter().map(by_id)).boxed()
        }
        Selection::Ids(ids) => futures::stream::iter(ids.into_iter().map(by_id)).boxed(),
        Selection::Inline(portfolios) => {
            futures::stream::iter(portfolios.into_iter().map(Ok)).boxed()
        }
    })
}

/// Resolves every model of `request` to the digest it has now, and the
/// as-of date to a trading day: what the whole run is scored with.
pub(crate) async fn pin(
    request: &RunRequest,
    scoring: &ScoringService,
    max_models: usize,
) -> Result<RunSpec, RunError> {
    if request.models.is_empty() {
        return Err(RunError::Invalid(
            "`models`: give at least one model".into(),
        ));
    }
    if request.models.len() > max_models {
        return Err(RunError::Invalid(format!(
            "`models`: {} models; at most {max_models} (--batch-max-models)",
            request.models.len()
        )));
    }
    let mut digests = BTreeMap::new();
    for reference in &request.models {
        let entry = scoring.registry().resolve(reference).await?;
        let name = entry.model.name().to_owned();
        if digests
            .insert(name.clone(), entry.model.digest.clone())
            .is_some()
        {
            return Err(RunError::Invalid(format!(
                "`models`: `{name}` is named twice"
            )));
        }
    }
    let as_of = scoring
        .market()
        .resolve_as_of(request.as_of)
        .await
        .map_err(|e| {
            if e.is_client_error() {
                RunError::Invalid(format!("`as_of`: {e}"))
            } else {
                RunError::Unavailable(e.to_string())
            }
        })?;
    Ok(RunSpec {
        digests,
        params: request.params.clone(),
        as_of,
    })
}
