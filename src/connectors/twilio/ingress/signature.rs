//! `X-Twilio-Signature` validation, computed the way Twilio's own helper libraries do.
//!
//! The signed string is the full URL Twilio called, followed for form bodies by every parameter
//! name and value, names sorted, each name's distinct values sorted. It is HMAC-SHA1'd with the
//! account's auth token and base64-encoded. JSON bodies are signed over the URL alone; the URL
//! carries `bodySHA256`, the hex SHA-256 of the body. Twilio's validators accept the URL both
//! with and without the scheme's default port, and so do we. Comparison is constant-time.

use std::collections::BTreeMap;

use base64::{engine::general_purpose::STANDARD as BASE64, Engine};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

/// What was signed besides the URL.
#[derive(Clone, Copy, Debug)]
pub enum SignedBody<'a> {
    /// Decoded `application/x-www-form-urlencoded` parameters, in body order.
    Form(&'a [(String, String)]),
    /// A raw JSON body, covered by the URL's `bodySHA256` parameter.
    Json(&'a [u8]),
}

/// Validates signatures against the primary auth token and, during a rotation, the secondary.
#[derive(Clone)]
pub struct SignatureValidator {
    tokens: Vec<SecretString>,
}

impl std::fmt::Debug for SignatureValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignatureValidator {{ tokens: {} }}", self.tokens.len())
    }
}

impl SignatureValidator {
    pub fn new(primary: SecretString, secondary: Option<SecretString>) -> Self {
        Self {
            tokens: std::iter::once(primary).chain(secondary).collect(),
        }
    }

    /// True when `signature` is Twilio's signature of `url` + `body` under one of our tokens.
    pub fn is_valid(&self, url: &str, body: SignedBody<'_>, signature: &str) -> bool {
        let Ok(parsed) = Url::parse(url) else {
            return false;
        };
        let params: &[(String, String)] = match body {
            SignedBody::Form(params) => params,
            SignedBody::Json(bytes) => {
                let Some(expected) = parsed
                    .query_pairs()
                    .find(|(name, _)| name == "bodySHA256")
                    .map(|(_, value)| value.into_owned())
                else {
                    return false;
                };
                let actual = hex::encode(Sha256::digest(bytes));
                if !bool::from(actual.as_bytes().ct_eq(expected.as_bytes())) {
                    return false;
                }
                &[]
            }
        };
        let suffix = signed_params(params);
        let (with_port, without_port) = port_variants(url, &parsed);
        // Each comparison is constant-time; stopping at the first match reveals only which
        // URL form or token matched, which is no secret.
        self.tokens.iter().any(|token| {
            [&without_port, &with_port].into_iter().any(|candidate| {
                let expected = sign(token.expose_secret(), candidate, &suffix);
                bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
            })
        })
    }
}

/// Twilio's signature of `url` and form `params` under `token` (used by `simulate` and tests).
pub fn compute_signature(token: &str, url: &str, params: &[(String, String)]) -> String {
    sign(token, url, &signed_params(params))
}

/// A short, one-way fingerprint of an auth token (the first 8 hex digits of its SHA-256): enough
/// to tell whether two processes hold the same token, useless for signing.
pub fn token_fingerprint(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..4])
}

/// The hex SHA-256 of a JSON body, as Twilio puts in `bodySHA256`.
pub fn body_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

fn sign(token: &str, url: &str, params_suffix: &str) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(token.as_bytes()).expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    mac.update(params_suffix.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// Names sorted; for each name its distinct values sorted; concatenated as name + value.
fn signed_params(params: &[(String, String)]) -> String {
    let mut grouped: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, value) in params {
        grouped.entry(name).or_default().push(value);
    }
    let mut out = String::with_capacity(params.iter().map(|(n, v)| n.len() + v.len()).sum());
    for (name, mut values) in grouped {
        values.sort_unstable();
        values.dedup();
        for value in values {
            out.push_str(name);
            out.push_str(value);
        }
    }
    out
}

/// The URL with the scheme's default port spelled out, and with any port removed.
fn port_variants(original: &str, parsed: &Url) -> (String, String) {
    let Some(host) = parsed.host_str() else {
        return (original.to_owned(), original.to_owned());
    };
    let scheme = parsed.scheme();
    let authority_start = scheme.len() + "://".len();
    // Keep the rest of the URL byte-for-byte as received (the url crate would re-encode it).
    let rest_start = original[authority_start..]
        .find(['/', '?'])
        .map_or(original.len(), |i| authority_start + i);
    let rest = &original[rest_start..];
    let userinfo = match parsed.password() {
        Some(password) => format!("{}:{}@", parsed.username(), password),
        None if !parsed.username().is_empty() => format!("{}@", parsed.username()),
        None => String::new(),
    };
    // `host_str` already brackets an IPv6 literal (`[2001:db8::1]`), as the URL must.
    let port = parsed.port_or_known_default().unwrap_or(80);
    (
        format!("{scheme}://{userinfo}{host}:{port}{rest}"),
        format!("{scheme}://{userinfo}{host}{rest}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matches_the_example_in_twilios_documentation() {
        // The worked example from Twilio's request-validation documentation.
        let token = "12345";
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let p = params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            compute_signature(token, url, &p),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        let validator = SignatureValidator::new(SecretString::from(token), None);
        assert!(validator.is_valid(url, SignedBody::Form(&p), "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert!(!validator.is_valid(
            url,
            SignedBody::Form(&p[1..]),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn port_variants_keep_the_rest_of_the_url_verbatim() {
        let url = "https://example.com/a%20b?x=a+b&y=%2F";
        let (with, without) = port_variants(url, &Url::parse(url).unwrap());
        assert_eq!(with, "https://example.com:443/a%20b?x=a+b&y=%2F");
        assert_eq!(without, url);
        let url = "http://127.0.0.1:8080/hook";
        let (with, without) = port_variants(url, &Url::parse(url).unwrap());
        assert_eq!(with, "http://127.0.0.1:8080/hook");
        assert_eq!(without, "http://127.0.0.1/hook");
    }

    #[test]
    fn an_ipv6_host_keeps_one_pair_of_brackets() {
        let url = "https://[2001:db8::10]/hook?a=1";
        let (with, without) = port_variants(url, &Url::parse(url).unwrap());
        assert_eq!(with, "https://[2001:db8::10]:443/hook?a=1");
        assert_eq!(without, url);
        let url = "http://[::1]:8080/hook";
        let (with, without) = port_variants(url, &Url::parse(url).unwrap());
        assert_eq!(with, url);
        assert_eq!(without, "http://[::1]/hook");

        let p = params(&[("Body", "hi")]);
        let signature = compute_signature("t", "https://[2001:db8::10]/hook", &p);
        let validator = SignatureValidator::new(SecretString::from("t"), None);
        for received in [
            "https://[2001:db8::10]/hook",
            "https://[2001:db8::10]:443/hook",
        ] {
            assert!(
                validator.is_valid(received, SignedBody::Form(&p), &signature),
                "{received}"
            );
        }
    }

    #[test]
    fn secondary_token_is_accepted_during_rotation() {
        let url = "https://example.com/hook";
        let p = params(&[("Body", "hi")]);
        let signature = compute_signature("new-token", url, &p);
        let old_only = SignatureValidator::new(SecretString::from("old-token"), None);
        assert!(!old_only.is_valid(url, SignedBody::Form(&p), &signature));
        let rotating = SignatureValidator::new(
            SecretString::from("old-token"),
            Some(SecretString::from("new-token")),
        );
        assert!(rotating.is_valid(url, SignedBody::Form(&p), &signature));
    }

    #[test]
    fn a_fingerprint_is_eight_hex_digits_of_the_tokens_sha256() {
        // printf %s 12345 | sha256sum → 5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5
        assert_eq!(token_fingerprint("12345"), "5994471a");
        assert_ne!(token_fingerprint("12346"), token_fingerprint("12345"));
    }

    #[test]
    fn json_bodies_are_covered_by_body_sha256() {
        let body = br#"[{"specversion":"1.0"}]"#;
        let url = format!("https://example.com/es?bodySHA256={}", body_sha256(body));
        let signature = compute_signature("t", &url, &[]);
        let validator = SignatureValidator::new(SecretString::from("t"), None);
        assert!(validator.is_valid(&url, SignedBody::Json(body), &signature));
        assert!(!validator.is_valid(&url, SignedBody::Json(b"[]"), &signature));
        let no_hash = "https://example.com/es";
        let signature = compute_signature("t", no_hash, &[]);
        assert!(!validator.is_valid(no_hash, SignedBody::Json(body), &signature));
    }
}
