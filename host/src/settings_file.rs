//! The configuration file and `riskhost config`.
//!
//! Settings come, in order of precedence, from flags, `RISKHOST_*`
//! environment variables, a TOML file (`--config FILE` or `RISKHOST_CONFIG`)
//! and defaults. The file's keys are the flag names (`cache_ttl_secs = 600`
//! or `cache-ttl-secs = 600`); each becomes the default of its environment
//! variable, so one mechanism serves every flag. `riskhost config` prints the
//! effective value of every setting and where it came from, with secrets
//! redacted.
//!
//! A secret setting (one whose environment value clap hides) can also be
//! read from a file named by `<VARIABLE>_FILE`, the convention of Docker and
//! Kubernetes secrets mounted as files: an environment variable shows in
//! `/proc/<pid>/environ`, crash dumps and `kubectl describe`, a mounted file
//! does not.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context as _, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// A loaded configuration file: its path and the variables it set.
#[derive(Debug, Default)]
pub struct ConfigFile {
    pub(crate) path: String,
    pub(crate) variables: Vec<String>,
}

/// Loads the configuration file named by `--config` or `RISKHOST_CONFIG`
/// into the environment, under variables that are not set already.
pub fn apply_config_file(args: &[OsString]) -> anyhow::Result<Option<ConfigFile>> {
    let from_args = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].to_string_lossy().into_owned())
        .or_else(|| {
            args.iter().find_map(|a| {
                a.to_str()
                    .and_then(|s| s.strip_prefix("--config="))
                    .map(str::to_owned)
            })
        });
    let Some(path) = from_args.or_else(|| std::env::var("RISKHOST_CONFIG").ok()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(Path::new(&path))
        .with_context(|| format!("cannot read config file {path}"))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{path} is not valid TOML"))?;
    let mut variables = Vec::new();
    for (key, value) in table {
        // `[[api_keys]]` tables become `--api-key` values (RISKHOST_API_KEYS).
        let value = if key == "api_keys" {
            toml::Value::String(api_key_specs(&value).with_context(|| path.clone())?)
        } else {
            value
        };
        let variable = format!("RISKHOST_{}", key.replace('-', "_").to_ascii_uppercase());
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(";"),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Table(_) => {
                bail!("{path}: `{key}` is a table; settings are flat `name = value` pairs")
            }
        };
        if std::env::var_os(&variable).is_none() {
            // SAFETY: called at start-up from `main`, before any thread exists.
            unsafe { std::env::set_var(&variable, value) };
            variables.push(variable);
        }
    }
    Ok(Some(ConfigFile { path, variables }))
}

/// Reads every secret setting named by a `<VARIABLE>_FILE` variable into
/// `<VARIABLE>`, for every subcommand of `command`, and answers the
/// variables it set. Runs before the configuration file is applied, so a
/// secret file outranks the file as its variable would. A variable whose
/// `_FILE` twin is a setting of its own (`RISKHOST_API_KEYS_FILE`, a file of
/// key lines) is left to that setting.
pub fn apply_secret_files(command: &Command) -> anyhow::Result<Vec<String>> {
    let mut all_envs = Vec::new();
    let mut secret_envs = Vec::new();
    collect_envs(command, &mut all_envs, &mut secret_envs);
    let mut applied = Vec::new();
    for variable in secret_envs {
        let file_variable = format!("{variable}_FILE");
        if all_envs.contains(&file_variable) || applied.contains(&variable) {
            continue;
        }
        let Some(path) = std::env::var_os(&file_variable) else {
            continue;
        };
        if std::env::var_os(&variable).is_some() {
            bail!("both {variable} and {file_variable} are set; set one of them");
        }
        let value = std::fs::read_to_string(&path).with_context(|| {
            format!("cannot read {file_variable}={}", Path::new(&path).display())
        })?;
        // Files written by `echo` or an editor end in a newline that is not
        // part of the secret.
        let value = value
            .strip_suffix('\n')
            .map(|v| v.strip_suffix('\r').unwrap_or(v))
            .unwrap_or(&value);
        // SAFETY: called at start-up from `main`, before any thread exists.
        unsafe { std::env::set_var(&variable, value) };
        applied.push(variable);
    }
    Ok(applied)
}

/// Every environment variable of `command` and its subcommands, and those
/// of them whose values clap hides (the secrets).
fn collect_envs(command: &Command, all: &mut Vec<String>, secret: &mut Vec<String>) {
    for arg in command.get_arguments() {
        if let Some(env) = arg.get_env().and_then(|e| e.to_str()) {
            all.push(env.to_owned());
            if arg.is_hide_env_values_set() {
                secret.push(env.to_owned());
            }
        }
    }
    for sub in command.get_subcommands() {
        collect_envs(sub, all, secret);
    }
}

/// The `[[api_keys]]` array of tables as `--api-key` values, `;`-separated.
fn api_key_specs(value: &toml::Value) -> anyhow::Result<String> {
    let toml::Value::Array(items) = value else {
        bail!(
            "`api_keys` must be [[api_keys]] tables (id, sha256, scopes, rate_per_minute, burst)"
        );
    };
    let specs = items
        .iter()
        .map(|item| match item {
            toml::Value::Table(t) => riskhost_auth::spec_from_toml(t).map_err(anyhow::Error::msg),
            _ => bail!("`api_keys` must be [[api_keys]] tables"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(specs.join(";"))
}

/// Names of settings whose values are secrets (key hashes are not secret,
/// but nobody needs them on screen either).
fn is_secret(id: &str) -> bool {
    ["token", "secret", "password"]
        .iter()
        .any(|s| id.contains(s))
        || id == "api_keys"
}

/// Hides the passwords of a connection string: the user-info password of a
/// URL (`postgres://user:pw@host/db`), and the value of every parameter
/// whose name says it is a secret (`password`, `sslpassword`, `token`…),
/// whether a URL query parameter (`?password=pw`) or a PostgreSQL
/// `key=value` pair (`password=pw`, `password = 'p w'`).
fn redact_url(value: &str) -> String {
    // Parameters first, so an `@` in a hidden value cannot pass for the
    // end of the user info below.
    let value = redact_parameters(value, value.contains("://"));
    match (value.find("://"), value.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &value[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &value[..scheme + 3], &value[at..]),
                None => value,
            }
        }
        _ => value,
    }
}

/// Replaces the value of every `name=value` parameter whose name is a
/// secret's with `***`. In a URL a value ends at `&` or `#`; in a `key=value`
/// string at white space, or at its closing quote when it is quoted (with
/// `\'` escapes), and white space may surround the `=`.
fn redact_parameters(value: &str, url: bool) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(eq) = rest.find('=') {
        let before = rest[..eq].trim_end();
        let name_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |i| i + 1);
        let name = before[name_start..].to_ascii_lowercase();
        out.push_str(&rest[..=eq]);
        rest = &rest[eq + 1..];
        if name.is_empty() || !is_secret(&name) {
            continue;
        }
        let secret = if url {
            rest
        } else {
            let trimmed = rest.trim_start();
            out.push_str(&rest[..rest.len() - trimmed.len()]);
            trimmed
        };
        let end = if url {
            secret.find(['&', '#']).unwrap_or(secret.len())
        } else if let Some(quoted) = secret.strip_prefix('\'') {
            let mut escaped = false;
            quoted
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(secret.len(), |(i, _)| i + 2)
        } else {
            secret.find(char::is_whitespace).unwrap_or(secret.len())
        };
        out.push_str("***");
        rest = &secret[end..];
    }
    out.push_str(rest);
    out
}

/// Prints every setting of `command` (the `serve` command's arguments) with
/// its effective value and source.
pub fn print_effective(
    command: &Command,
    matches: &ArgMatches,
    config_file: Option<&ConfigFile>,
    from_secret_files: &[String],
) {
    use std::fmt::Write as _;
    let mut out = String::from(
        "# effective riskhost configuration (flag > RISKHOST_* env > config file > default)\n",
    );
    if let Some(file) = config_file {
        let _ = writeln!(out, "# config file: {}", file.path);
    }
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version" | "config") {
            continue;
        }
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let shown = if values.is_empty() {
            "(unset)".to_owned()
        } else if is_secret(id) {
            "<redacted>".to_owned()
        } else {
            values
                .iter()
                .map(|v| redact_url(v))
                .collect::<Vec<_>>()
                .join(",")
        };
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "env",
            Some(ValueSource::DefaultValue) => "default",
            _ => "",
        };
        let env = arg
            .get_env()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let from_file = config_file.is_some_and(|f| f.variables.contains(&env));
        let source = match source {
            "env" if from_secret_files.contains(&env) => "env file",
            "env" if from_file => "file",
            other => other,
        };
        let _ = writeln!(
            out,
            "{:<28} = {:<40} # {source:<8} {env}",
            id.replace('_', "-"),
            shown
        );
    }
    // A closed pipe (e.g. `| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_and_secret_names_are_hidden() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("http://u@h"), "http://u@h");
        assert!(is_secret("admin_token") && is_secret("api_keys"));
        assert!(!is_secret("keys_source"));
        assert!(!is_secret("listen"));
        assert!(!is_secret("trusted_keys"));
    }

    #[test]
    fn passwords_in_query_parameters_and_key_value_strings_are_hidden() {
        for (given, shown) in [
            (
                "http://ch:8123/?user=default&password=s3cret&database=risk",
                "http://ch:8123/?user=default&password=***&database=risk",
            ),
            (
                "postgres://h/db?sslmode=require&password=s3cret#frag",
                "postgres://h/db?sslmode=require&password=***#frag",
            ),
            (
                "postgres://u:pw@h/db?PASSWORD=p@ss&application_name=riskhost",
                "postgres://u:***@h/db?PASSWORD=***&application_name=riskhost",
            ),
            (
                "host=127.0.0.1 user=u password=s3cret dbname=test",
                "host=127.0.0.1 user=u password=*** dbname=test",
            ),
            (
                "host=h password = 'my \\'s3cret\\'' sslpassword=k3y dbname=test",
                "host=h password = *** sslpassword=*** dbname=test",
            ),
            ("host=h user=u dbname=test", "host=h user=u dbname=test"),
            ("redis://h:6379/?db=2", "redis://h:6379/?db=2"),
        ] {
            let got = redact_url(given);
            assert_eq!(got, shown, "{given}");
            assert!(!got.contains("s3cret") && !got.contains("k3y"), "{got}");
        }
    }
}
