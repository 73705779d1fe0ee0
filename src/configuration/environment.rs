//! The variables the service was started with, read once. The core settings and each
//! connector's settings are deserialised (with envy) from the same [`Environment`], so tests can
//! hand the whole service a set of variables without touching the process environment.
//!
//! The binary adds the variables of a `.env` file in the working directory ([`read_dotenv`])
//! where the process environment does not set them, so the service and `simulate`, started
//! from two shells in the same directory, see the same configuration.

use std::{collections::BTreeMap, path::Path};

use super::parse::ConfigError;

/// The file [`read_dotenv`] is usually given: `.env` in the working directory.
pub const DOTENV_FILE: &str = ".env";

/// The variables of the `.env`-style file at `path` (`NAME=value` lines, `#` comments), or
/// `None` when there is no such file. An unreadable line is reported without its text, which
/// may hold a secret.
pub fn read_dotenv(path: &Path) -> Result<Option<Vec<(String, String)>>, ConfigError> {
    let lines = match dotenvy::from_path_iter(path) {
        Ok(lines) => lines,
        Err(error) if error.not_found() => return Ok(None),
        Err(error) => return Err(dotenv_error(path, &error)),
    };
    lines
        .map(|line| line.map_err(|error| dotenv_error(path, &error)))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn dotenv_error(path: &Path, error: &dotenvy::Error) -> ConfigError {
    let problem = match error {
        dotenvy::Error::Io(error) => format!("cannot read {}: {}", path.display(), error.kind()),
        _ => format!(
            "{} has a line that is not NAME=value (its text is not shown)",
            path.display()
        ),
    };
    ConfigError::new(DOTENV_FILE, problem)
}

/// A snapshot of environment variables. Its `Debug` output shows no names or values: values
/// can be secrets.
#[derive(Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    /// The process environment. Variables whose name or value is not valid UTF-8 are left out
    /// (no variable the service reads may hold such a value).
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars_os()
                .filter_map(|(name, value)| {
                    Some((name.into_string().ok()?, value.into_string().ok()?))
                })
                .collect(),
        }
    }

    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Adds `pairs` (for example the lines of a `.env` file) where the environment does not
    /// already set the variable: what is set explicitly wins over a file.
    pub fn with_fallbacks<I, K, V>(mut self, pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        for (name, value) in pairs {
            self.vars.entry(name.into()).or_insert_with(|| value.into());
        }
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// `(name, value)` pairs, as envy's `from_iter` takes them.
    pub fn pairs(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.vars.iter().map(|(k, v)| (k.clone(), v.clone()))
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Environment({} variables)", self.vars.len())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_dotenv_file_is_read_and_a_bad_line_is_not_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        assert!(
            read_dotenv(&path).unwrap().is_none(),
            "no file, no variables"
        );
        std::fs::write(&path, "# comment\nPORT=8081\nTWILIO_AUTH_TOKEN=abc123\n").unwrap();
        assert_eq!(
            read_dotenv(&path).unwrap().unwrap(),
            [
                ("PORT".to_owned(), "8081".to_owned()),
                ("TWILIO_AUTH_TOKEN".to_owned(), "abc123".to_owned())
            ]
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(file, "SECRET='s3cr3t-unterminated").unwrap();
        let error = read_dotenv(&path).unwrap_err().to_string();
        assert!(error.starts_with("configuration error: .env: "), "{error}");
        assert!(!error.contains("s3cr3t"), "{error}");
    }

    #[test]
    fn the_environment_wins_over_fallbacks() {
        let env = Environment::from_pairs([("PORT", "9000")])
            .with_fallbacks([("PORT", "8081"), ("LOG_LEVEL", "debug")]);
        assert_eq!(env.get("PORT"), Some("9000"));
        assert_eq!(env.get("LOG_LEVEL"), Some("debug"));
        assert_eq!(format!("{env:?}"), "Environment(2 variables)");
    }
}
