//! The variables the service was started with, read once. The core settings and each
//! connector's settings are deserialised (with envy) from the same [`Environment`], so tests can
//! hand the whole service a set of variables without touching the process environment.
//!
//! The binary adds the variables of a `.env` file in the working directory ([`read_dotenv`])
//! where the process environment does not set them, so the service and `simulate`, started
//! from two shells in the same directory, see the same configuration.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use serde::{de, Deserialize};

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
    /// Names of variables whose value is not valid UTF-8 (their values are never kept).
    not_utf8: BTreeSet<String>,
}

impl Environment {
    /// The process environment. Variables whose name or value is not valid UTF-8 are left out;
    /// the names of those with a UTF-8 name are remembered, so reading one of ours is an error
    /// ([`Environment::require_utf8`]) rather than a silently missing setting.
    pub fn from_process() -> Self {
        let mut environment = Self::default();
        for (name, value) in std::env::vars_os() {
            let Ok(name) = name.into_string() else {
                continue;
            };
            match value.into_string() {
                Ok(value) => {
                    environment.vars.insert(name, value);
                }
                Err(_) => {
                    environment.not_utf8.insert(name);
                }
            }
        }
        environment
    }

    /// Fails, naming the first one, when a variable `T` reads (its field names, upper-cased,
    /// after `prefix`) has a value that is not valid UTF-8. The value is never shown.
    pub fn require_utf8<'de, T: Deserialize<'de>>(&self, prefix: &str) -> Result<(), ConfigError> {
        for field in field_names::<T>() {
            let name = format!("{prefix}{}", field.to_ascii_uppercase());
            if self.not_utf8.contains(&name) {
                let name: &'static str = Box::leak(name.into_boxed_str());
                return Err(ConfigError::new(name, "is not valid UTF-8"));
            }
        }
        Ok(())
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
            not_utf8: BTreeSet::new(),
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
            let name = name.into();
            // Set, though not as UTF-8: still set (reading it is the error), not replaced.
            if !self.not_utf8.contains(&name) {
                self.vars.entry(name).or_insert_with(|| value.into());
            }
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

/// The field names of a struct that derives `Deserialize`: the variables a settings struct
/// reads, without listing them a second time.
fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// A deserializer that only records which fields a struct asks for.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only structs have field names"))
    }

    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Raw {
        port: Option<String>,
        auth_token: Option<String>,
    }

    #[test]
    fn a_variable_we_read_that_is_not_utf8_is_named_never_shown() {
        let mut environment = Environment::from_pairs([("PORT", "8080")]);
        environment.not_utf8.insert("X_AUTH_TOKEN".to_owned());
        environment.not_utf8.insert("SOMEONE_ELSES".to_owned());
        assert!(environment.require_utf8::<Raw>("").is_ok());
        let error = environment.require_utf8::<Raw>("X_").unwrap_err();
        assert_eq!(error.variable, "X_AUTH_TOKEN");
        assert_eq!(
            error.to_string(),
            "configuration error: X_AUTH_TOKEN: is not valid UTF-8"
        );
    }

    #[test]
    fn field_names_come_from_the_struct() {
        assert_eq!(field_names::<Raw>(), &["port", "auth_token"]);
    }

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
