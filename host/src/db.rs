//! `riskhost db migrate|seed`: the set-up edges of the database code
//! (anyhow lives here, the library crates return typed errors).

use std::time::Duration;

use anyhow::Context as _;
use riskhost_db::Warehouse;
use riskhost_market::{PriceTable, StoredPortfolio, sample_instrument_info, sample_portfolios};

use crate::config::{DbArgs, DbCommand};
use crate::sources::open_postgres;

pub(crate) async fn run(command: DbCommand) -> anyhow::Result<()> {
    match command {
        DbCommand::Migrate(args) => migrate(&args).await,
        DbCommand::Seed(args) => seed(&args).await,
    }
}

fn nothing_configured() -> anyhow::Error {
    anyhow::anyhow!(
        "no database configured: give --postgres-url (RISKHOST_POSTGRES_URL) and/or --clickhouse-url (RISKHOST_CLICKHOUSE_URL)"
    )
}

async fn migrate(args: &DbArgs) -> anyhow::Result<()> {
    let (pg, ch) = (args.data.postgres(), args.data.clickhouse());
    if pg.is_none() && ch.is_none() {
        return Err(nothing_configured());
    }
    if let Some(settings) = pg {
        let schema = settings.schema.clone();
        open_postgres(settings, Duration::ZERO).await?;
        println!("PostgreSQL schema {schema}: migrated");
    }
    if let Some(settings) = ch {
        let wh = Warehouse::new(settings)?;
        riskhost_market::create_clickhouse_tables(&wh).await?;
        let version = riskhost_events::create_events_table(&wh, &args.events_table).await?;
        println!(
            "ClickHouse {version} database {}: market and {} tables ready",
            wh.database(),
            args.events_table
        );
        let backfill = riskhost_events::backfill_analytics(&wh, &args.events_table).await?;
        match backfill.events {
            Some(n) => println!(
                "score analytics: {n} events recorded before {} aggregated",
                backfill.cutoff
            ),
            None => println!(
                "score analytics: already backfilled (cutoff {})",
                backfill.cutoff
            ),
        }
    }
    Ok(())
}

async fn seed(args: &DbArgs) -> anyhow::Result<()> {
    let (pg, ch) = (args.data.postgres(), args.data.clickhouse());
    if pg.is_none() && ch.is_none() {
        return Err(nothing_configured());
    }
    let table: PriceTable = match &args.prices {
        Some(path) => riskhost_market::load_prices_csv_file(path)
            .with_context(|| format!("cannot load prices from {}", path.display()))?,
        None => riskhost_market::sample_table(),
    };
    let portfolios: Vec<StoredPortfolio> = sample_portfolios()?
        .into_iter()
        .filter(|p| p.positions.iter().all(|x| table.contains(&x.instrument)))
        .collect();
    let info = sample_instrument_info();
    if let Some(settings) = pg {
        let schema = settings.schema.clone();
        let pool = open_postgres(settings, Duration::ZERO).await?;
        let report = riskhost_market::seed_postgres(&pool, &table, &info, &portfolios).await?;
        println!(
            "PostgreSQL schema {schema}: {} instruments, {} prices, {} portfolios ({} positions) written or changed",
            report.instruments, report.prices, report.portfolios, report.positions
        );
    }
    if let Some(settings) = ch {
        let wh = Warehouse::new(settings)?;
        let prices = riskhost_market::seed_clickhouse(&wh, &table, &info, &portfolios).await?;
        println!(
            "ClickHouse database {}: {} instruments, {prices} prices, {} portfolios written",
            wh.database(),
            table.instruments().len(),
            portfolios.len()
        );
    }
    Ok(())
}
