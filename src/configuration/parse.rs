//! Reading one variable: the error that names it ([`ConfigError`]) and the parsers every
//! settings struct (the core's and each connector's) validates its values with.

use std::str::FromStr;

use url::Url;

/// A configuration problem, naming the variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        Self {
            variable,
            problem: problem.into(),
        }
    }
}

/// `None` for a missing or blank value; trimmed otherwise.
pub fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// The parsed value, or `default` when the variable is missing or blank.
pub fn parse_or<T>(
    variable: &'static str,
    value: Option<String>,
    default: T,
) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match non_empty(value) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|e| ConfigError::new(variable, format!("cannot parse {text:?}: {e}"))),
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), or `default` when missing.
pub fn parse_bool(
    variable: &'static str,
    value: Option<&str>,
    default: bool,
) -> Result<bool, ConfigError> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(ConfigError::new(
            variable,
            format!("expected true or false, got {other:?}"),
        )),
    }
}

/// An absolute `http(s)` URL with a host.
pub fn parse_absolute_url(variable: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value)
        .map_err(|e| ConfigError::new(variable, format!("not a valid URL ({e})")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ConfigError::new(variable, "scheme must be http or https"));
    }
    if url.host_str().is_none() {
        return Err(ConfigError::new(variable, "must include a host"));
    }
    Ok(url)
}

/// A base URL: scheme, host, optional port and path prefix, without query or fragment.
pub fn parse_base_url(variable: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = parse_absolute_url(variable, value.trim_end_matches('/'))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            variable,
            "must not carry a query string or fragment",
        ));
    }
    Ok(url)
}

/// A public origin: `http(s)://host[:port]` and nothing else. The service appends its own
/// paths, so anything after the host is a mistake (most often a pasted webhook URL) that would
/// make every signature check fail; it is refused with the value to use instead.
pub fn parse_origin(variable: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = parse_absolute_url(variable, value)?;
    let origin = url.origin().ascii_serialization();
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(variable, "must not carry user info"));
    }
    if url.query().is_some() {
        return Err(ConfigError::new(
            variable,
            format!("must not carry a query string: use {origin}"),
        ));
    }
    if url.fragment().is_some() {
        return Err(ConfigError::new(
            variable,
            format!(
                "must not carry a #fragment (connection overrides belong in the URL given to \
                 the provider): use {origin}"
            ),
        ));
    }
    if url.path() != "/" {
        return Err(ConfigError::new(
            variable,
            format!(
                "must be only scheme and host, without the path {:?} (the service adds the \
                 webhook paths): use {origin}",
                url.path()
            ),
        ));
    }
    if value.ends_with('/') {
        return Err(ConfigError::new(
            variable,
            format!("must not end with '/': use {origin}"),
        ));
    }
    Ok(url)
}

/// An identifier made of `prefix` and 32 hexadecimal characters (a provider SID).
pub fn check_sid(variable: &'static str, value: &str, prefix: &str) -> Result<(), ConfigError> {
    let well_formed = value.len() == 34
        && value.starts_with(prefix)
        && value[2..].chars().all(|c| c.is_ascii_hexdigit());
    if well_formed {
        Ok(())
    } else {
        Err(ConfigError::new(
            variable,
            format!("must be {prefix} followed by 32 hexadecimal characters"),
        ))
    }
}

/// Removes user info from a URL so it can be shown.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable>".to_owned(),
    }
}

/// Removes the URL's password from an error text, should a client library ever echo it.
pub fn scrub_url_password(text: &str, url: &str) -> String {
    match Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    {
        Some(password) if !password.is_empty() => text.replace(&password, "***"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_scheme_host_and_port_only() {
        for ok in [
            "https://abc.ngrok.app",
            "http://127.0.0.1:8080",
            "https://ingress-egress-abc123-ew.a.run.app",
        ] {
            let url = parse_origin("PUBLIC_BASE_URL", ok).expect(ok);
            assert_eq!(url.origin().ascii_serialization(), ok);
        }
        for (bad, says) in [
            (
                "https://abc.ngrok.app/webhooks/twilio/sms",
                "without the path \"/webhooks/twilio/sms\"",
            ),
            ("https://abc.ngrok.app/", "must not end with '/'"),
            ("https://abc.ngrok.app?x=1", "query string"),
            ("https://abc.ngrok.app#rc=3", "#fragment"),
            ("https://user:pw@abc.ngrok.app", "user info"),
            ("ftp://abc.ngrok.app", "scheme"),
        ] {
            let error = parse_origin("PUBLIC_BASE_URL", bad).unwrap_err();
            let line = error.to_string();
            assert!(line.contains(says), "{bad}: {line}");
            assert!(
                line.starts_with("configuration error: PUBLIC_BASE_URL: "),
                "{line}"
            );
            assert!(!line.contains('\n'));
            assert!(!line.contains("pw"), "user info is not echoed: {line}");
            if !says.contains("scheme") && !says.contains("user") {
                assert!(line.ends_with("use https://abc.ngrok.app"), "{line}");
            }
        }
    }
}
