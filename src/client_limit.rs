//! A cap on the requests one client may have in progress at once (`MAX_REQUESTS_PER_CLIENT`),
//! so one sender cannot hold every connection: with slow bodies (see `BODY_READ_TIMEOUT_MS`),
//! unsigned clients could otherwise crowd out Twilio. A request over the cap is answered 429
//! at once and counted in `rejected_requests_total{reason="client_limit"}`.
//!
//! The client is the peer address, or, with `TRUST_FORWARDED_HEADERS=true`, the address a
//! trusted proxy names in `Forwarded` / `X-Forwarded-For`.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web,
};

use crate::{error::ApiError, metrics::Metrics};

pub struct ClientLimiter {
    in_flight: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
    trust_forwarded_headers: bool,
    metrics: Metrics,
}

/// One request in progress; frees its place when dropped (also when the request is abandoned).
struct Slot {
    limiter: Arc<ClientLimiter>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut in_flight = self.limiter.in_flight.lock().expect("poisoned");
        if let Some(count) = in_flight.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.client);
            }
        }
    }
}

impl ClientLimiter {
    pub fn new(max: usize, trust_forwarded_headers: bool, metrics: Metrics) -> Self {
        Self {
            in_flight: Mutex::default(),
            max,
            trust_forwarded_headers,
            metrics,
        }
    }

    fn client(&self, req: &ServiceRequest) -> Option<IpAddr> {
        if self.trust_forwarded_headers {
            if let Some(ip) = req.connection_info().realip_remote_addr().and_then(|addr| {
                addr.parse::<std::net::SocketAddr>()
                    .map(|a| a.ip())
                    .ok()
                    .or_else(|| addr.parse().ok())
            }) {
                return Some(ip);
            }
        }
        req.peer_addr().map(|addr| addr.ip())
    }

    fn enter(self: &Arc<Self>, client: IpAddr) -> Option<Slot> {
        let mut in_flight = self.in_flight.lock().expect("poisoned");
        let count = in_flight.entry(client).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            limiter: self.clone(),
            client,
        })
    }
}

/// The middleware (`actix_web::middleware::from_fn(limit_per_client)`); the limiter comes from
/// the app data.
pub async fn limit_per_client(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(limiter) = req
        .app_data::<web::Data<ClientLimiter>>()
        .map(|d| d.clone().into_inner())
    else {
        return next.call(req).await;
    };
    let Some(client) = limiter.client(&req) else {
        return next.call(req).await;
    };
    let Some(slot) = limiter.enter(client) else {
        limiter
            .metrics
            .rejected_requests
            .with_label_values(&["client_limit"])
            .inc();
        tracing::info!(
            path = req.path(),
            "request refused: too many in progress from one client"
        );
        return Err(ApiError::TooManyRequests.into());
    };
    let response = next.call(req).await;
    drop(slot);
    response
}
