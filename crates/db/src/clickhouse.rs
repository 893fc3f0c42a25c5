//! The ClickHouse connection shared by the ClickHouse market source and the
//! score-event sink: one pooled HTTP client (the `clickhouse` crate keeps
//! keep-alive connections), bounded in time, and the server's version.
//!
//! riskhost supports ClickHouse **18.16** and newer. 18.16 speaks neither
//! `RowBinaryWithNamesAndTypes` nor the newer settings the crate's schema
//! validation sends, so validation is off and every row type here is written
//! to match its table by hand (tests insert and read each one).

use std::time::Duration;

use crate::DbError;

/// Where ClickHouse is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct WarehouseSettings {
    /// `http://[user[:password]@]host:8123`.
    pub url: String,
    pub database: String,
    /// Bound of one query or insert, connection included.
    pub timeout: Duration,
}

/// A ClickHouse server version, e.g. `18.16.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion(pub u32, pub u32);

impl ServerVersion {
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ServerVersion(major, minor))
    }

    /// Column codecs (`CODEC(Delta, …)`, `DoubleDelta`, `Gorilla`) exist from
    /// 19.x on; 20.1 is where every codec used here is certain.
    pub fn has_codecs(self) -> bool {
        self >= ServerVersion(20, 1)
    }

    /// `LowCardinality` left the experimental flag in 19.3.
    pub fn low_cardinality_is_experimental(self) -> bool {
        self < ServerVersion(19, 3)
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Checks a database or table name; names are interpolated into SQL.
pub fn validate_name(what: &str, name: &str) -> Result<(), DbError> {
    let mut chars = name.chars();
    let ok = name.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(DbError::Invalid(format!(
            "invalid ClickHouse {what} {name:?}: use 1-64 characters of [A-Za-z0-9_], not starting with a digit"
        )))
    }
}

/// A configured client and its settings.
#[derive(Clone)]
pub struct Warehouse {
    client: clickhouse::Client,
    settings: WarehouseSettings,
    /// The URL without credentials, for messages.
    target: String,
}

impl std::fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warehouse")
            .field("target", &self.target)
            .field("database", &self.settings.database)
            .finish()
    }
}

impl Warehouse {
    /// A client for `settings`; connects lazily.
    pub fn new(settings: WarehouseSettings) -> Result<Warehouse, DbError> {
        validate_name("database", &settings.database)?;
        let (url, user, password) = split_credentials(&settings.url)?;
        let mut client = clickhouse::Client::default()
            .with_url(url.clone())
            .with_validation(false);
        if let Some(user) = user {
            client = client.with_user(user);
        }
        if let Some(password) = password {
            client = client.with_password(password);
        }
        Ok(Warehouse {
            client,
            settings,
            target: url,
        })
    }

    pub fn settings(&self) -> &WarehouseSettings {
        &self.settings
    }

    pub fn database(&self) -> &str {
        &self.settings.database
    }

    /// The client, with the database selected.
    pub fn client(&self) -> clickhouse::Client {
        self.client
            .clone()
            .with_database(self.settings.database.clone())
    }

    /// The client with no database selected (to create it).
    pub fn bare_client(&self) -> &clickhouse::Client {
        &self.client
    }

    /// Bounds `fut` by the timeout and turns its error into `Unavailable`.
    pub async fn timed<T>(
        &self,
        what: &str,
        fut: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, DbError> {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(self.settings.timeout, fut).await;
        metrics::histogram!("riskhost_db_query_duration_seconds", "pool" => "clickhouse", "query" => what.to_owned())
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(DbError::Unavailable(format!(
                "ClickHouse at {} failed the {what} query: {}",
                self.target,
                error_text(&e)
            ))),
            Err(_) => Err(DbError::Unavailable(format!(
                "ClickHouse at {} did not answer the {what} query within {:?}",
                self.target, self.settings.timeout
            ))),
        }
    }

    /// `SELECT version()`.
    pub async fn server_version(&self) -> Result<ServerVersion, DbError> {
        let text: String = self
            .timed(
                "version",
                self.client.query("SELECT version()").fetch_one::<String>(),
            )
            .await?;
        ServerVersion::parse(&text).ok_or_else(|| {
            DbError::Unavailable(format!(
                "ClickHouse reported an unreadable version {text:?}"
            ))
        })
    }

    /// Runs DDL or another statement without rows.
    pub async fn execute(&self, what: &str, sql: &str) -> Result<(), DbError> {
        self.timed(what, self.client.query(sql).execute()).await
    }
}

/// The error and its causes in one line (the crate's top-level message is
/// often just "network error").
pub(crate) fn error_text(e: &clickhouse::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `http://user:pw@host:8123` → (`http://host:8123`, user, password).
fn split_credentials(url: &str) -> Result<(String, Option<String>, Option<String>), DbError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(DbError::Invalid(format!(
            "invalid ClickHouse URL {url:?}: expected http://host:8123"
        )));
    };
    if scheme != "http" && scheme != "https" {
        return Err(DbError::Invalid(format!(
            "invalid ClickHouse URL: scheme {scheme:?} is not http or https"
        )));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        None => Ok((url.trim_end_matches('/').to_owned(), None, None)),
        Some((userinfo, host)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u.to_owned(), Some(p.to_owned())),
                None => (userinfo.to_owned(), None),
            };
            let clean = format!("{scheme}://{host}{path}");
            Ok((clean.trim_end_matches('/').to_owned(), Some(user), password))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_gate_features() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        assert_eq!(old, ServerVersion(18, 16));
        assert!(!old.has_codecs());
        assert!(old.low_cardinality_is_experimental());
        let new = ServerVersion::parse("24.3.2.23").unwrap();
        assert!(new.has_codecs() && !new.low_cardinality_is_experimental());
        assert_eq!(ServerVersion::parse("nope"), None);
    }

    #[test]
    fn credentials_leave_the_url() {
        assert_eq!(
            split_credentials("http://u:p@127.0.0.1:8123/").unwrap(),
            (
                "http://127.0.0.1:8123".into(),
                Some("u".into()),
                Some("p".into())
            )
        );
        assert_eq!(
            split_credentials("http://127.0.0.1:8123").unwrap(),
            ("http://127.0.0.1:8123".into(), None, None)
        );
        assert!(split_credentials("127.0.0.1:8123").is_err());
        assert!(split_credentials("ftp://x").is_err());
    }

    #[test]
    fn names_are_strict() {
        validate_name("database", "riskhost_test_1").unwrap();
        for bad in ["", "1x", "a-b", "a`b", "a.b"] {
            assert!(validate_name("database", bad).is_err(), "{bad}");
        }
    }
}
