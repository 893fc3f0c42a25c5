//! API keys as data: the token format, their digests, scopes and rate
//! overrides, how they are written in configuration, and the in-memory key
//! source ([`StaticKeys`]) that configuration fills.
//!
//! A token is `<id>.<secret>`: the id says which key to look up (and goes into
//! logs and score events), the secret is 32 random bytes in hex. Only
//! `sha256(<whole token>)` is ever stored, so a leaked configuration or table
//! does not leak a usable token.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{KeyError, KeySource};

/// Longest key id.
pub(crate) const MAX_ID_LEN: usize = 64;

/// What a key may do. `Admin` implies `Score`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Scoring, and reading models and score history.
    Score,
    /// Model upload, rollback and delete, cache purges; and everything `Score` may.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Score => "score",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Scope, String> {
        match text.trim() {
            "score" => Ok(Scope::Score),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope `{other}`: the scopes are `score` and `admin`"
            )),
        }
    }

    /// The widest of a list of scopes (`admin` implies `score`).
    pub(crate) fn widest<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Scope, String> {
        let mut widest = None;
        for name in names {
            let scope = Scope::parse(name)?;
            widest = widest.max(Some(scope));
        }
        widest.ok_or_else(|| "a key needs a scope (`score` or `admin`)".to_owned())
    }

    /// Whether a key of this scope may use a route that needs `needed`.
    pub(crate) fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

/// A key's own rate, overriding `--rate-limit-per-minute`/`--rate-limit-burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateOverride {
    pub per_minute: Option<u32>,
    pub burst: Option<u32>,
}

/// One API key as stored: its id, the digest of its token, scope and rate.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub digest: [u8; 32],
    pub scope: Scope,
    pub rate: RateOverride,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The digest is not a secret, but nobody needs it in a log line.
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("scope", &self.scope)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// Whether `token` is this key's token, in constant time.
    pub fn verifies(&self, token: &str) -> bool {
        self.digest.ct_eq(&digest(token)).into()
    }
}

/// `sha256(token)`.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Checks a key id: 1–64 of `[A-Za-z0-9_-]` (no `.`, which ends the id in a token).
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "invalid key id {:?}: use 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 - _",
            id.chars().take(MAX_ID_LEN).collect::<String>()
        ));
    }
    Ok(())
}

/// The id of a presented token: what comes before the first `.`. A token
/// without a `.` is the `--admin-token` shorthand, whose id is `admin`.
pub fn token_id(token: &str) -> Option<&str> {
    if token.is_empty() || token.len() > 1024 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    match token.split_once('.') {
        Some((id, secret)) if check_id(id).is_ok() && !secret.is_empty() => Some(id),
        Some(_) => None,
        None => Some(ADMIN_TOKEN_ID),
    }
}

/// The key id `--admin-token` stands for.
pub const ADMIN_TOKEN_ID: &str = "admin";

/// A fresh token for key `id`: 32 bytes of OS randomness, hex-encoded.
pub fn generate_token(id: &str) -> Result<String, String> {
    check_id(id)?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("no OS randomness: {e}"))?;
    Ok(format!("{id}.{}", hex::encode(secret)))
}

fn parse_digest(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let text = text.strip_prefix("sha256:").unwrap_or(text);
    let bytes = hex::decode(text).map_err(|e| format!("sha256 is not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| "sha256 must be 64 hex digits".to_owned())
}

fn parse_u32(name: &str, text: &str) -> Result<u32, String> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{name}` must be a whole number from 1, got {text:?}"))
}

/// One `--api-key` value: `ID:sha256=HEX,scopes=score+admin[,rate_per_minute=N][,burst=N]`
/// (the environment variable separates keys with `;`; a configuration
/// file's `[[api_keys]]` tables become this form).
pub fn parse_key_spec(spec: &str) -> Result<ApiKey, String> {
    let (id, rest) = spec
        .split_once(':')
        .ok_or_else(|| "expected `ID:sha256=HEX,scopes=score`".to_owned())?;
    let id = id.trim();
    check_id(id)?;
    let (mut digest, mut scope, mut rate) = (None, None, RateOverride::default());
    for pair in rest.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("key {id}: `{pair}` is not NAME=VALUE"))?;
        let err = |e: String| format!("key {id}: {e}");
        match name.trim() {
            "sha256" => digest = Some(parse_digest(value).map_err(err)?),
            "scopes" | "scope" => scope = Some(Scope::widest(value.split('+')).map_err(err)?),
            "rate_per_minute" => rate.per_minute = Some(parse_u32(name, value).map_err(err)?),
            "burst" => rate.burst = Some(parse_u32(name, value).map_err(err)?),
            other => {
                return Err(format!(
                    "key {id}: unknown field `{other}` (sha256, scopes, rate_per_minute, burst)"
                ));
            }
        }
    }
    Ok(ApiKey {
        id: id.to_owned(),
        digest: digest.ok_or_else(|| format!("key {id}: `sha256` is missing"))?,
        scope: scope.ok_or_else(|| format!("key {id}: `scopes` is missing"))?,
        rate,
    })
}

/// The `--api-key` form of a key (what `[[api_keys]]` tables become).
pub fn key_spec(key: &ApiKey) -> String {
    let mut spec = format!(
        "{}:sha256={},scopes={}",
        key.id,
        hex::encode(key.digest),
        key.scope.as_str()
    );
    if let Some(n) = key.rate.per_minute {
        spec.push_str(&format!(",rate_per_minute={n}"));
    }
    if let Some(n) = key.rate.burst {
        spec.push_str(&format!(",burst={n}"));
    }
    spec
}

/// An `[[api_keys]]` table of a TOML file, as an `--api-key` value.
pub fn spec_from_toml(table: &toml::Table) -> Result<String, String> {
    let text = |name: &str| match table.get(name) {
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`{name}` must be a string, got {other}")),
        None => Ok(None),
    };
    let number = |name: &str| match table.get(name) {
        Some(toml::Value::Integer(n)) => u32::try_from(*n)
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| format!("`{name}` must be from 1 to {}", u32::MAX)),
        Some(other) => Err(format!("`{name}` must be a number, got {other}")),
        None => Ok(None),
    };
    for name in table.keys() {
        if !["id", "sha256", "scopes", "rate_per_minute", "burst"].contains(&name.as_str()) {
            return Err(format!(
                "unknown field `{name}` in [[api_keys]] (id, sha256, scopes, rate_per_minute, burst)"
            ));
        }
    }
    let id = text("id")?.ok_or("[[api_keys]] needs `id`")?;
    let sha = text("sha256")?.ok_or_else(|| format!("key {id}: `sha256` is missing"))?;
    let scopes: Vec<String> = match table.get("scopes") {
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("key {id}: scopes are strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(toml::Value::String(s)) => vec![s.clone()],
        _ => return Err(format!("key {id}: `scopes` is missing, e.g. [\"score\"]")),
    };
    let key = ApiKey {
        scope: Scope::widest(scopes.iter().map(String::as_str))
            .map_err(|e| format!("key {id}: {e}"))?,
        digest: parse_digest(&sha).map_err(|e| format!("key {id}: {e}"))?,
        rate: RateOverride {
            per_minute: number("rate_per_minute").map_err(|e| format!("key {id}: {e}"))?,
            burst: number("burst").map_err(|e| format!("key {id}: {e}"))?,
        },
        id: id.clone(),
    };
    check_id(&key.id)?;
    Ok(key_spec(&key))
}

/// Keys from a TOML keys file (`--api-keys-file`): `[[api_keys]]` tables.
pub fn load_keys_file(path: &std::path::Path) -> Result<Vec<ApiKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read keys file {}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
    let mut keys = Vec::new();
    for (name, value) in table {
        let toml::Value::Array(items) = value else {
            return Err(format!(
                "{}: unexpected `{name}`; a keys file holds [[api_keys]] tables",
                path.display()
            ));
        };
        if name != "api_keys" {
            return Err(format!(
                "{}: unexpected `{name}`; a keys file holds [[api_keys]] tables",
                path.display()
            ));
        }
        for item in items {
            let toml::Value::Table(t) = item else {
                return Err(format!("{}: api_keys holds tables", path.display()));
            };
            let spec = spec_from_toml(&t).map_err(|e| format!("{}: {e}", path.display()))?;
            keys.push(parse_key_spec(&spec)?);
        }
    }
    Ok(keys)
}

/// Keys held in memory, from configuration: `--api-key`, `--api-keys-file`,
/// `[[api_keys]]` in the configuration file, and `--admin-token`.
#[derive(Debug, Default)]
pub struct StaticKeys {
    keys: HashMap<String, Arc<ApiKey>>,
}

impl StaticKeys {
    /// Fails on a duplicate id: two keys with one id would make which one
    /// answers depend on the order of configuration.
    pub fn new(keys: impl IntoIterator<Item = ApiKey>) -> Result<StaticKeys, String> {
        let mut map = HashMap::new();
        for key in keys {
            let id = key.id.clone();
            if map.insert(id.clone(), Arc::new(key)).is_some() {
                return Err(format!("key id `{id}` is configured twice"));
            }
        }
        Ok(StaticKeys { keys: map })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[async_trait::async_trait]
impl KeySource for StaticKeys {
    async fn get(&self, id: &str) -> Result<Option<Arc<ApiKey>>, KeyError> {
        Ok(self.keys.get(id).cloned())
    }

    fn describe(&self) -> String {
        format!("{} configured key(s)", self.keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_and_reject_nonsense() {
        let token = generate_token("ops").unwrap();
        assert!(token.starts_with("ops.") && token.len() == 4 + 64);
        let key = ApiKey {
            id: "ops".into(),
            digest: digest(&token),
            scope: Scope::Admin,
            rate: RateOverride {
                per_minute: Some(60),
                burst: None,
            },
        };
        let parsed = parse_key_spec(&key_spec(&key)).unwrap();
        assert_eq!(parsed, key);
        assert!(parsed.verifies(&token));
        assert!(!parsed.verifies(&format!("{token}x")));
        assert!(parse_key_spec("ops:scopes=score").is_err());
        assert!(parse_key_spec("o.ps:sha256=00,scopes=score").is_err());
        assert!(parse_key_spec(&format!("a:sha256={},scopes=root", "0".repeat(64))).is_err());
        assert_eq!(
            parse_key_spec(&format!("a:sha256={},scopes=score+admin", "0".repeat(64)))
                .unwrap()
                .scope,
            Scope::Admin
        );
    }

    #[test]
    fn token_ids() {
        assert_eq!(token_id("ops.abc"), Some("ops"));
        assert_eq!(token_id("legacy-admin-token"), Some(ADMIN_TOKEN_ID));
        assert_eq!(token_id("ops."), None);
        assert_eq!(token_id(".abc"), None);
        assert_eq!(token_id("o ps.abc"), None);
        assert_eq!(token_id(""), None);
        assert!(Scope::Admin.allows(Scope::Score) && !Scope::Score.allows(Scope::Admin));
    }

    #[test]
    fn toml_tables_become_specs() {
        let table: toml::Table = toml::from_str(&format!(
            "id = \"svc\"\nsha256 = \"{}\"\nscopes = [\"score\"]\nrate_per_minute = 10",
            "ab".repeat(32)
        ))
        .unwrap();
        let key = parse_key_spec(&spec_from_toml(&table).unwrap()).unwrap();
        assert_eq!(key.scope, Scope::Score);
        assert_eq!(key.rate.per_minute, Some(10));
        let bad: toml::Table = toml::from_str("id = \"svc\"\nsha = \"x\"").unwrap();
        assert!(spec_from_toml(&bad).is_err());
    }
}
