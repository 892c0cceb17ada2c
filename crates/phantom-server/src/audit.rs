//! The audit log's writer: one thread with one connection to the state database,
//! fed through a channel, so that recording a request never costs the request a
//! database open (or a blocking-pool thread). Records are written in batches; a
//! failure is logged, never silently lost.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;

/// One audit record.
pub(crate) struct Entry {
    pub key: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub result: String,
    pub detail: Option<String>,
}

/// The sending side; cheap to use from any thread.
pub(crate) struct AuditLog(Mutex<Sender<Entry>>);

impl AuditLog {
    /// Start the writer thread.
    pub(crate) fn start() -> AuditLog {
        let (tx, rx) = mpsc::channel();
        let _ = std::thread::Builder::new()
            .name("phantom-audit".into())
            .spawn(move || writer(rx));
        AuditLog(Mutex::new(tx))
    }

    pub(crate) fn record(&self, entry: Entry) {
        if let Ok(tx) = self.0.lock() {
            let _ = tx.send(entry);
        }
    }
}

fn writer(rx: Receiver<Entry>) {
    let mut audit = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        // What came meanwhile goes in the same transaction.
        while let Ok(more) = rx.recv_timeout(Duration::from_millis(2)) {
            batch.push(more);
            if batch.len() >= 256 {
                break;
            }
        }
        if audit.is_none() {
            match phantom_state::audit::Audit::open_default() {
                Ok(a) => audit = Some(a),
                Err(e) => {
                    eprintln!(
                        "phantom-supervisor: audit log: {e} ({} records lost)",
                        batch.len()
                    );
                    continue;
                }
            }
        }
        let a = audit.as_ref().expect("opened above");
        for e in &batch {
            if let Err(err) = a.record(
                e.key.as_deref(),
                &e.action,
                e.target.as_deref(),
                &e.result,
                e.detail.as_deref(),
            ) {
                eprintln!("phantom-supervisor: audit log: {err}");
            }
        }
    }
}
