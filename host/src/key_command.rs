//! `riskhost key new|hash|revoke|list`: making and managing API keys.
//!
//! `new` draws the secret from the OS, prints the token exactly once (on
//! standard output, for the caller to hand over) and either the
//! configuration entry holding only its hash or, with `--postgres`, inserts
//! that hash into the `api_keys` table. Nothing here logs a token.

use std::io::{BufRead as _, Write as _};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::sources::{DataArgs, open_postgres};
use riskhost_auth::{
    ApiKey, RateOverride, Scope, generate_token, key_spec, token_digest, token_id,
};

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a key: prints the token once, and its configuration entry
    /// (hash only) or, with --postgres, stores the hash in PostgreSQL.
    New(NewKeyArgs),
    /// Print the configuration entry of an existing token read from
    /// standard input (for keys made elsewhere).
    Hash(HashArgs),
    /// Revoke a key stored in PostgreSQL.
    Revoke {
        #[arg(long)]
        id: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List the keys stored in PostgreSQL (ids and scopes, never hashes).
    List {
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct NewKeyArgs {
    /// The key's id, shown in logs and score events: 1-64 of A-Z a-z 0-9 - _.
    #[arg(long)]
    pub(crate) id: String,
    /// `score` (scoring, reading models and history) or `admin` (also model
    /// and cache management).
    #[arg(long, value_parser = Scope::parse)]
    pub(crate) scope: Scope,
    /// The key's own rate, requests per minute (default: --rate-limit-per-minute).
    #[arg(long)]
    pub(crate) rate_per_minute: Option<u32>,
    /// The key's own burst (default: --rate-limit-burst, at most its rate).
    #[arg(long)]
    pub(crate) burst: Option<u32>,
    /// Store the key in PostgreSQL (--postgres-url, --postgres-schema)
    /// instead of printing its configuration entry.
    #[arg(long)]
    pub(crate) postgres: bool,
    /// A note stored with the key in PostgreSQL (who it is for).
    #[arg(long, default_value = "")]
    pub(crate) description: String,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

#[derive(Debug, Args)]
pub(crate) struct HashArgs {
    #[arg(long, value_parser = Scope::parse)]
    pub(crate) scope: Scope,
}

fn toml_entry(key: &ApiKey) -> String {
    let mut entry = format!(
        "[[api_keys]]\nid = \"{}\"\nsha256 = \"{}\"\nscopes = [\"{}\"]\n",
        key.id,
        hex::encode(key.digest),
        key.scope.as_str()
    );
    if let Some(n) = key.rate.per_minute {
        entry.push_str(&format!("rate_per_minute = {n}\n"));
    }
    if let Some(n) = key.rate.burst {
        entry.push_str(&format!("burst = {n}\n"));
    }
    entry
}

fn positive(name: &str, n: Option<u32>) -> anyhow::Result<Option<u32>> {
    match n {
        Some(0) => bail!("--{name} must be at least 1"),
        n => Ok(n),
    }
}

pub(crate) async fn run(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::New(args) => {
            let token = generate_token(&args.id).map_err(anyhow::Error::msg)?;
            let key = ApiKey {
                id: args.id.clone(),
                digest: token_digest(&token),
                scope: args.scope,
                rate: RateOverride {
                    per_minute: positive("rate-per-minute", args.rate_per_minute)?,
                    burst: positive("burst", args.burst)?,
                },
            };
            let mut out = std::io::stdout().lock();
            if args.postgres {
                let pool = open_postgres(args.data.require_postgres()?, Duration::ZERO).await?;
                riskhost_auth::insert_key(&pool, &key, &args.description)
                    .await
                    .with_context(|| format!("cannot store key `{}`", key.id))?;
                writeln!(
                    out,
                    "# key `{}` (scope {}) stored in PostgreSQL schema {}.\n# The token, shown only now; give it to its owner and keep no copy:\n{token}",
                    key.id,
                    key.scope.as_str(),
                    pool.settings().schema
                )?;
            } else {
                writeln!(
                    out,
                    "# The token of key `{}`, shown only now; give it to its owner and keep no copy:\n{token}\n\n# For the configuration file (or a --api-keys-file); it holds only the hash:\n{}\n# Or as a flag / RISKHOST_API_KEYS entry:\n# --api-key '{}'",
                    key.id,
                    toml_entry(&key),
                    key_spec(&key)
                )?;
            }
            Ok(())
        }
        KeyCommand::Hash(args) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the token from standard input")?;
            let token = line.trim();
            let Some(id) = token_id(token).filter(|_| token.contains('.')) else {
                bail!("standard input does not hold a token `<id>.<secret>`");
            };
            let key = ApiKey {
                id: id.to_owned(),
                digest: token_digest(token),
                scope: args.scope,
                rate: RateOverride::default(),
            };
            print!("{}", toml_entry(&key));
            Ok(())
        }
        KeyCommand::Revoke { id, data } => {
            let pool = open_postgres(data.require_postgres()?, Duration::ZERO).await?;
            if riskhost_auth::revoke_key(&pool, &id).await? {
                println!(
                    "key `{id}` revoked; running servers refuse it within --keys-cache-ttl-ms"
                );
                Ok(())
            } else {
                bail!("no unrevoked key `{id}` in PostgreSQL")
            }
        }
        KeyCommand::List { data } => {
            let pool = open_postgres(data.require_postgres()?, Duration::ZERO).await?;
            for (id, scopes, created, revoked) in riskhost_auth::list_keys(&pool).await? {
                let revoked = if revoked.is_empty() {
                    String::new()
                } else {
                    format!("  revoked {revoked}")
                };
                println!("{id}\t{scopes}\tcreated {created}{revoked}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use riskhost_auth::{parse_key_spec, spec_from_toml};

    #[test]
    fn the_toml_entry_is_a_loadable_key() {
        let key = ApiKey {
            id: "svc".into(),
            digest: token_digest("svc.x"),
            scope: Scope::Score,
            rate: RateOverride {
                per_minute: Some(5),
                burst: Some(2),
            },
        };
        let table: toml::Table = toml::from_str(&toml_entry(&key)).unwrap();
        let items = table["api_keys"].as_array().unwrap();
        let spec = spec_from_toml(items[0].as_table().unwrap()).unwrap();
        assert_eq!(parse_key_spec(&spec).unwrap(), key);
    }
}
