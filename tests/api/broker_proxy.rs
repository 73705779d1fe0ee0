//! A TCP proxy in front of RabbitMQ that a test can start, stall (connections stay open but no
//! byte gets through, as with a broker that stopped answering) and cut (every connection
//! dropped, as a broker crash would).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

pub struct BrokerProxy {
    pub port: u16,
    accept_loop: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    stalled: Arc<AtomicBool>,
}

impl BrokerProxy {
    /// Reserves a port with nothing listening on it yet.
    pub fn unstarted() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            port,
            accept_loop: None,
            connections: Arc::default(),
            stalled: Arc::default(),
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub async fn start(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("proxy port free");
        let connections = self.connections.clone();
        let stalled = self.stalled.clone();
        self.accept_loop = Some(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let stalled = stalled.clone();
                let handle = tokio::spawn(async move {
                    if let Ok(broker) = TcpStream::connect("127.0.0.1:5672").await {
                        let (client_read, client_write) = client.into_split();
                        let (broker_read, broker_write) = broker.into_split();
                        tokio::select! {
                            _ = pump(client_read, broker_write, stalled.clone()) => {}
                            _ = pump(broker_read, client_write, stalled) => {}
                        }
                    }
                });
                connections.lock().unwrap().push(handle);
            }
        }));
    }

    /// Holds every byte in both directions until [`BrokerProxy::resume`].
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// Stops listening and drops every proxied connection.
    pub fn cut(&mut self) {
        if let Some(accept_loop) = self.accept_loop.take() {
            accept_loop.abort();
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
