//! The platforms this build serves. Adding a platform is a folder under `connectors/` and a line
//! here; nothing else in the core changes.

use std::sync::Arc;

use super::{twilio, Connector, ConnectorContext};
use crate::configuration::ConfigError;

/// `ingress-egress simulate …`: signed sample webhooks for a running service.
pub use twilio::simulate;

/// Builds every enabled connector (each reads and validates its own settings).
pub fn build(context: &ConnectorContext) -> Result<Vec<Arc<dyn Connector>>, ConfigError> {
    let mut connectors: Vec<Arc<dyn Connector>> = Vec::new();
    connectors.extend(twilio::TwilioConnector::build(context)?);
    Ok(connectors)
}
