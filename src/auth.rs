//! Bearer-token checks for the operator and debug routes, in one place.
//!
//! A guard holds the tokens that open it. With no token configured it is open in development
//! and closed (404, as if the route did not exist) in production.

use actix_web::{http::header::AUTHORIZATION, HttpRequest};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::{
    configuration::{AppEnv, Settings},
    error::ApiError,
};

/// Who may call a group of routes.
#[derive(Clone, Debug)]
pub struct BearerAuth {
    tokens: Vec<SecretString>,
    production: bool,
}

impl BearerAuth {
    pub fn new(tokens: impl IntoIterator<Item = SecretString>, app_env: AppEnv) -> Self {
        Self {
            tokens: tokens.into_iter().collect(),
            production: app_env == AppEnv::Production,
        }
    }

    /// The debug routes: `DEBUG_TOKEN`.
    pub fn debug(settings: &Settings) -> Self {
        Self::new(settings.debug_token.iter().cloned(), settings.app_env)
    }

    /// Operator actions: `DEBUG_TOKEN` or `OPERATOR_TOKEN`.
    pub fn operator(settings: &Settings) -> Self {
        Self::new(
            settings
                .debug_token
                .iter()
                .chain(settings.operator_token.iter())
                .cloned(),
            settings.app_env,
        )
    }

    /// Checks `Authorization: Bearer <token>` (constant-time against every configured token).
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if self.tokens.is_empty() {
            return if self.production {
                Err(ApiError::NotFound)
            } else {
                Ok(())
            };
        }
        let presented = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        let matches = self.tokens.iter().fold(false, |found, token| {
            found | bool::from(token.expose_secret().as_bytes().ct_eq(presented.as_bytes()))
        });
        if matches {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}
