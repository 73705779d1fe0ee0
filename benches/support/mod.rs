//! What the benchmarks share: signed webhook requests, a readiness wait, and a lean HTTP/1.1
//! load generator over keep-alive connections.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ingress_egress::connectors::twilio::ingress::signature::compute_signature;

/// Raw HTTP requests of signed inbound-SMS webhooks, one per index (its MessageSid), for the
/// service at `address` whose `PUBLIC_BASE_URL` is `public_base_url`.
pub fn signed_sms_requests(
    address: &str,
    token: &str,
    public_base_url: &str,
    indices: std::ops::Range<usize>,
) -> Vec<Vec<u8>> {
    indices
        .map(|i| {
            let params = vec![
                ("MessageSid".to_owned(), format!("SM{:032x}", i)),
                ("From".to_owned(), "+14155550100".to_owned()),
                ("To".to_owned(), "+15005550006".to_owned()),
                (
                    "Body".to_owned(),
                    format!("benchmark message {i}: the quick brown fox jumps over the lazy dog"),
                ),
                ("NumMedia".to_owned(), "0".to_owned()),
            ];
            let signature = compute_signature(
                token,
                &format!("{public_base_url}/webhooks/twilio/sms"),
                &params,
            );
            let body = serde_urlencoded::to_string(&params).unwrap();
            format!(
                "POST /webhooks/twilio/sms HTTP/1.1\r\nHost: {address}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\n\
                 X-Twilio-Signature: {signature}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .collect()
}

/// Waits (at most 10 s) until the service at `address` answers `/readyz` with 200.
pub async fn wait_ready(address: &str) {
    let ready = format!("GET /readyz HTTP/1.1\r\nHost: {address}\r\n\r\n").into_bytes();
    for _ in 0..200 {
        if let Ok(mut connection) = tokio::net::TcpStream::connect(address).await {
            if exchange_once(&mut connection, &ready).await == Some(200) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `requests` over `concurrency` keep-alive connections, one request in flight on each
/// (a lean HTTP/1.1 client, so the load generator takes little of the CPU the service needs).
/// Returns requests per second; every answer must be 200.
pub async fn load(address: &str, requests: Vec<Vec<u8>>, concurrency: usize) -> f64 {
    let total = requests.len();
    let queue = Arc::new(std::sync::Mutex::new(requests));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let queue = queue.clone();
            let address = address.to_owned();
            tokio::spawn(async move {
                let mut connection = tokio::net::TcpStream::connect(&address).await.unwrap();
                connection.set_nodelay(true).unwrap();
                loop {
                    let Some(request) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    assert_eq!(exchange_once(&mut connection, &request).await, Some(200));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Writes one request and reads one response (headers + Content-Length body); its status.
pub async fn exchange_once(connection: &mut tokio::net::TcpStream, request: &[u8]) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    connection.write_all(request).await.ok()?;
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        let read = connection.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buffer[..end]).ok()?;
        let status = head.get(9..12)?.parse().ok()?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buffer.len() < end + 4 + length {
            let read = connection.read(&mut chunk).await.ok()?;
            if read == 0 {
                return None;
            }
            buffer.extend_from_slice(&chunk[..read]);
        }
        return Some(status);
    }
}
