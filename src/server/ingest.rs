//! Group commit for webhook ingest: deliveries that arrive while the previous transaction
//! commits are recorded together in the next one, so a burst costs one disk flush per batch
//! rather than one per delivery. A delivery is answered only after its batch committed, so a
//! 202 still means "recorded and queued"; with no burst, a batch is one delivery and nothing
//! waits.

use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use crate::store::{Accepted, BackendKind, NewDelivery, Store};

/// At most this many deliveries per transaction.
const MAX_BATCH: usize = 256;

/// Concurrent writer transactions on PostgreSQL.
const POSTGRES_WRITERS: usize = 4;

/// Deliveries waiting for the writer; beyond this, handlers wait for room (backpressure).
const QUEUE: usize = 4096;

struct Pending {
    delivery_id: String,
    event: &'static str,
    action: Option<String>,
    kind: &'static str,
    payload: Box<RawValue>,
    reply: oneshot::Sender<Result<Accepted, String>>,
}

/// The handle handlers send deliveries to. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Pending>,
}

impl Ingest {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Store) -> Ingest {
        let (tx, rx) = mpsc::channel(QUEUE);
        // SQLite has one writer whatever we do; PostgreSQL commits several transactions at
        // once, and a batch's statements are round trips that one writer would serialize.
        let writers = match store.backend() {
            BackendKind::Sqlite => 1,
            BackendKind::Postgres => POSTGRES_WRITERS,
        };
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..writers {
            tokio::spawn(write_batches(store.clone(), rx.clone()));
        }
        Ingest { tx }
    }

    /// Records the delivery and queues its request; `Err` carries the database error's text.
    pub async fn accept(
        &self,
        delivery_id: &str,
        event: &'static str,
        action: Option<&str>,
        kind: &'static str,
        payload: Box<RawValue>,
    ) -> Result<Accepted, String> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            delivery_id: delivery_id.to_string(),
            event,
            action: action.map(str::to_string),
            kind,
            payload,
            reply,
        };
        self.tx
            .send(pending)
            .await
            .map_err(|_| "the ingest writer stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the ingest writer stopped".to_string())?
    }
}

async fn write_batches(store: Store, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
        }
        let deliveries: Vec<NewDelivery<'_>> = batch
            .iter()
            .map(|p| NewDelivery {
                delivery_id: &p.delivery_id,
                event: p.event,
                action: p.action.as_deref(),
                kind: p.kind,
                payload: &p.payload,
            })
            .collect();
        let result = store.accept_deliveries(&deliveries).await;
        drop(deliveries);
        match result {
            Ok(answers) => {
                for (p, a) in batch.drain(..).zip(answers) {
                    let _ = p.reply.send(Ok(a));
                }
            }
            Err(e) => {
                let text = e.to_string();
                tracing::error!(error = %text, n = batch.len(), "cannot record deliveries");
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(text.clone()));
                }
            }
        }
    }
}
