//! The variables the service was started with, read once. The core settings and each
//! connector's settings are deserialised (with envy) from the same [`Environment`], so tests can
//! hand the whole service a set of variables without touching the process environment.

use std::collections::{BTreeMap, BTreeSet};

use serde::{de, Deserialize};

use super::parse::ConfigError;

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
}
