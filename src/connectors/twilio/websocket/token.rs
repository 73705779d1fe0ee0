//! Twilio access tokens for the Conversations socket, minted locally from an API key.
//!
//! The token is the JWT Twilio's helper libraries build for `AccessToken` + `ChatGrant`:
//! HS256 signed with the API key secret, header `cty: twilio-fpa;v=1` (plus `twr` when a region
//! is given), claims `jti = <key sid>-<now>`, `iss` = key sid, `sub` = account sid, `exp`,
//! `nbf` = now, and `grants = {identity, chat: {service_sid}}`. There is no `iat`: the Python
//! helper does not set one.
//!
//! Hand-rolled rather than through a JWT crate: it is one fixed HS256 shape, and `hmac`, `sha2`
//! and `base64` are already in the service's dependency tree.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a token is minted from.
#[derive(Clone)]
pub struct TokenSpec {
    pub account_sid: String,
    pub api_key_sid: String,
    pub api_key_secret: SecretString,
    pub chat_service_sid: String,
    pub identity: String,
    pub ttl: Duration,
    /// Twilio region for the `twr` header. Twilio's helper adds the header only when asked, so
    /// the default region is passed as `None`.
    pub region: Option<String>,
}

impl std::fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSpec")
            .field("account_sid", &self.account_sid)
            .field("api_key_sid", &self.api_key_sid)
            .field("chat_service_sid", &self.chat_service_sid)
            .field("identity", &self.identity)
            .field("ttl", &self.ttl)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("access token field {0} is empty")]
    Empty(&'static str),
    #[error("access token TTL must be at least one second")]
    ZeroTtl,
    #[error("the system clock is before 1970")]
    Clock,
    #[error("HMAC key rejected: {0}")]
    Key(String),
    #[error("malformed JWT: {0}")]
    Malformed(String),
}

/// A minted token. `Debug` never shows the JWT.
#[derive(Clone)]
pub struct AccessToken {
    jwt: SecretString,
    pub issued_at: u64,
    pub expires_at: u64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl AccessToken {
    pub fn jwt(&self) -> &str {
        self.jwt.expose_secret()
    }

    /// Seconds left at `now` (0 once expired).
    pub fn remaining(&self, now: u64) -> u64 {
        self.expires_at.saturating_sub(now)
    }
}

/// Something that can produce a fresh token; the socket session re-mints through it.
pub trait TokenSource: Send + Sync + 'static {
    fn mint(&self) -> Result<AccessToken, TokenError>;
}

impl TokenSource for TokenSpec {
    fn mint(&self) -> Result<AccessToken, TokenError> {
        mint(self, unix_now()?)
    }
}

pub fn unix_now() -> Result<u64, TokenError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .map_err(|_| TokenError::Clock)
}

// Field order follows what PyJWT emits (header keys sorted) so tokens are byte-comparable.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Header {
    pub alg: String,
    pub cty: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub twr: Option<String>,
    pub typ: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct ChatGrant {
    pub service_sid: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Grants {
    pub chat: ChatGrant,
    pub identity: String,
}

// Field order follows the Python helper's payload dict.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Claims {
    pub jti: String,
    pub grants: Grants,
    pub iss: String,
    pub exp: u64,
    pub nbf: u64,
    pub sub: String,
}

/// Mints a token valid from `now` (unix seconds) for `spec.ttl`.
pub fn mint(spec: &TokenSpec, now: u64) -> Result<AccessToken, TokenError> {
    for (name, value) in [
        ("account_sid", spec.account_sid.as_str()),
        ("api_key_sid", spec.api_key_sid.as_str()),
        ("api_key_secret", spec.api_key_secret.expose_secret()),
        ("chat_service_sid", spec.chat_service_sid.as_str()),
        ("identity", spec.identity.as_str()),
    ] {
        if value.is_empty() {
            return Err(TokenError::Empty(name));
        }
    }
    let ttl = spec.ttl.as_secs();
    if ttl == 0 {
        return Err(TokenError::ZeroTtl);
    }
    let header = Header {
        alg: "HS256".into(),
        cty: "twilio-fpa;v=1".into(),
        twr: spec.region.clone().filter(|region| !region.is_empty()),
        typ: "JWT".into(),
    };
    let claims = Claims {
        jti: format!("{}-{now}", spec.api_key_sid),
        grants: Grants {
            chat: ChatGrant {
                service_sid: spec.chat_service_sid.clone(),
            },
            identity: spec.identity.clone(),
        },
        iss: spec.api_key_sid.clone(),
        exp: now.saturating_add(ttl),
        nbf: now,
        sub: spec.account_sid.clone(),
    };
    let header_json =
        serde_json::to_vec(&header).map_err(|e| TokenError::Malformed(e.to_string()))?;
    let claims_json =
        serde_json::to_vec(&claims).map_err(|e| TokenError::Malformed(e.to_string()))?;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(claims_json)
    );
    let signature = sign(spec.api_key_secret.expose_secret(), &signing_input)?;
    Ok(AccessToken {
        jwt: SecretString::from(format!("{signing_input}.{signature}")),
        issued_at: now,
        expires_at: claims.exp,
    })
}

fn sign(secret: &str, input: &str) -> Result<String, TokenError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| TokenError::Key(e.to_string()))?;
    mac.update(input.as_bytes());
    Ok(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// Splits a JWT into its decoded header and claims as JSON, without checking the signature.
pub fn decode_unverified(jwt: &str) -> Result<(serde_json::Value, serde_json::Value), TokenError> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(claims), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let decode = |part: &str| -> Result<serde_json::Value, TokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| TokenError::Malformed(e.to_string()))
    };
    Ok((decode(header)?, decode(claims)?))
}

/// Whether `jwt` carries a valid HS256 signature under `secret`.
pub fn verify_signature(jwt: &str, secret: &str) -> Result<bool, TokenError> {
    let Some((input, signature)) = jwt.rsplit_once('.') else {
        return Err(TokenError::Malformed("no signature".into()));
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| TokenError::Malformed(e.to_string()))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| TokenError::Key(e.to_string()))?;
    mac.update(input.as_bytes());
    Ok(mac.verify_slice(&signature).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> TokenSpec {
        TokenSpec {
            account_sid: format!("AC{}", "0".repeat(32)),
            api_key_sid: format!("SK{}", "0".repeat(32)),
            api_key_secret: SecretString::from("emulator-api-key-secret"),
            chat_service_sid: format!("IS{}", "0".repeat(32)),
            identity: "bot".into(),
            ttl: Duration::from_secs(3600),
            region: None,
        }
    }

    #[test]
    fn header_and_claims_have_the_helper_library_shape() {
        let token = mint(&spec(), 1_700_000_000).unwrap();
        let (header, claims) = decode_unverified(token.jwt()).unwrap();
        assert_eq!(
            header,
            json!({"typ": "JWT", "alg": "HS256", "cty": "twilio-fpa;v=1"})
        );
        assert_eq!(
            claims,
            json!({
                "jti": format!("SK{}-1700000000", "0".repeat(32)),
                "grants": {"identity": "bot", "chat": {"service_sid": format!("IS{}", "0".repeat(32))}},
                "iss": format!("SK{}", "0".repeat(32)),
                "sub": format!("AC{}", "0".repeat(32)),
                "exp": 1_700_003_600u64,
                "nbf": 1_700_000_000u64,
            })
        );
        assert_eq!(token.expires_at, 1_700_003_600);
        assert_eq!(token.remaining(1_700_003_000), 600);
        assert_eq!(token.remaining(1_800_000_000), 0);
    }

    #[test]
    fn header_bytes_are_sorted_like_pyjwt() {
        let token = mint(&spec(), 1).unwrap();
        let header = token.jwt().split('.').next().unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(header).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"alg":"HS256","cty":"twilio-fpa;v=1","typ":"JWT"}"#
        );
    }

    /// `fixtures/twilio/access_token.json` is a token Twilio's Python helper library minted
    /// (`scripts/fixtures/generate_access_token.py`, clock frozen at `inputs.now`): the same
    /// inputs at the same time give the same header, the same claims and the same bytes.
    #[test]
    fn matches_the_token_twilios_library_minted() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/twilio/access_token.json"
        );
        let text = std::fs::read_to_string(path).expect("fixtures/twilio/access_token.json");
        let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
        let input = &fixture["inputs"];
        let text = |name: &str| {
            input[name]
                .as_str()
                .unwrap_or_else(|| panic!("inputs.{name}"))
                .to_owned()
        };
        let now = input["now"].as_u64().expect("inputs.now");
        let ttl = input["ttl"].as_u64().expect("inputs.ttl");
        let spec = TokenSpec {
            account_sid: text("accountSid"),
            api_key_sid: text("apiKeySid"),
            api_key_secret: SecretString::from(text("apiKeySecret")),
            chat_service_sid: text("chatServiceSid"),
            identity: text("identity"),
            ttl: Duration::from_secs(ttl),
            region: None,
        };
        let theirs = fixture["token"].as_str().expect("token");
        let ours = mint(&spec, now).unwrap();
        let (their_header, their_claims) = decode_unverified(theirs).unwrap();
        let (our_header, our_claims) = decode_unverified(ours.jwt()).unwrap();
        assert_eq!(our_header, their_header);
        assert_eq!(our_header, fixture["header"]);
        assert_eq!(our_claims, their_claims);
        assert_eq!(our_claims, fixture["claims"]);
        assert_eq!(
            ours.jwt(),
            theirs,
            "same inputs and time give the same bytes"
        );
        assert_eq!(ours.expires_at, now + ttl);
        assert!(verify_signature(theirs, spec.api_key_secret.expose_secret()).unwrap());

        // A region other than the default adds `twr` to the header, as the library does.
        let regional = &fixture["regional"];
        let spec = TokenSpec {
            region: Some(
                regional["region"]
                    .as_str()
                    .expect("regional.region")
                    .to_owned(),
            ),
            ..spec
        };
        let theirs = regional["token"].as_str().expect("regional.token");
        let ours = mint(&spec, now).unwrap();
        assert_eq!(decode_unverified(ours.jwt()).unwrap().0, regional["header"]);
        assert_eq!(ours.jwt(), theirs);
    }

    #[test]
    fn region_adds_twr() {
        let mut spec = spec();
        spec.region = Some("ie1".into());
        let (header, _) = decode_unverified(mint(&spec, 1).unwrap().jwt()).unwrap();
        assert_eq!(header["twr"], "ie1");
    }

    #[test]
    fn signature_verifies_with_the_secret_only() {
        let token = mint(&spec(), 1_700_000_000).unwrap();
        assert!(verify_signature(token.jwt(), "emulator-api-key-secret").unwrap());
        assert!(!verify_signature(token.jwt(), "other").unwrap());
        let mut tampered = token.jwt().to_owned();
        tampered.insert(5, 'x');
        assert!(!verify_signature(&tampered, "emulator-api-key-secret").unwrap_or(false));
    }

    #[test]
    fn known_answer_signature() {
        // HS256 over a fixed input; the expected value is HMAC-SHA256 computed
        // independently (python3 -c "import hmac,hashlib,base64; ...").
        let signature = sign("secret", "a.b").unwrap();
        assert_eq!(signature, "sbh7-OGGafGEtAYeHeo5APUejXcSJjSgpMkJURRbDuA");
    }

    #[test]
    fn empty_inputs_and_zero_ttl_are_rejected() {
        let mut bad = spec();
        bad.identity.clear();
        assert_eq!(mint(&bad, 1).unwrap_err(), TokenError::Empty("identity"));
        let mut bad = spec();
        bad.api_key_secret = SecretString::from("");
        assert_eq!(
            mint(&bad, 1).unwrap_err(),
            TokenError::Empty("api_key_secret")
        );
        let mut bad = spec();
        bad.ttl = Duration::from_millis(500);
        assert_eq!(mint(&bad, 1).unwrap_err(), TokenError::ZeroTtl);
    }

    #[test]
    fn debug_never_prints_secrets() {
        let token = mint(&spec(), 1).unwrap();
        let printed = format!("{:?} {:?}", spec(), token);
        assert!(!printed.contains("emulator-api-key-secret"));
        assert!(!printed.contains(token.jwt()));
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(decode_unverified("a.b").is_err());
        assert!(decode_unverified("a.b.c.d").is_err());
        assert!(decode_unverified("!!.??.x").is_err());
    }
}
