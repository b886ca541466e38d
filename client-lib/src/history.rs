//! An opt-in recorder of client operations as a Jepsen-style history: one
//! JSON object per line with `process`, `type` (invoke, ok, fail, info), `f`
//! (read, write, delete), `key`, `value` and `time_ns`. `fulva check` checks
//! such a history for linearizability.

use crate::transport::DataTransport;
use crate::{Client, ClientError};
use bytes::Bytes;
use fulva_proto::transport::Transport;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Kind of a history event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The operation started.
    Invoke,
    /// It completed.
    Ok,
    /// It certainly had no effect.
    Fail,
    /// Its outcome is unknown (it may or may not have taken effect).
    Info,
}

/// The operation of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// A get.
    Read,
    /// A put.
    Write,
    /// A delete.
    Delete,
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The logical single-threaded client that did the operation.
    pub process: u64,
    /// Invoke or completion.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Operation.
    pub f: Function,
    /// Key (UTF-8, lossy).
    pub key: String,
    /// Written value on invoke; read value on a read's `ok` (`null` = absent).
    pub value: Option<String>,
    /// Nanoseconds since the history started.
    pub time_ns: u64,
}

/// Values longer than this are recorded by a digest, not whole.
pub const VALUE_RECORDED_WHOLE: usize = 256;

/// How a value appears in a history: itself (UTF-8, lossy) up to
/// [`VALUE_RECORDED_WHOLE`] bytes; a larger one as its first 32 bytes, its
/// length and its xxh3 hash (`p3-17-…#262144:9a0c…`), so a read of a large
/// value that was never written (one byte wrong) still shows.
pub fn describe_value(value: &[u8]) -> String {
    if value.len() <= VALUE_RECORDED_WHOLE {
        return String::from_utf8_lossy(value).into_owned();
    }
    let head = String::from_utf8_lossy(&value[..32]);
    format!("{head}…#{}:{:016x}", value.len(), fulva_proto::key_hash(value))
}

/// A history being written to a file (thread-safe).
pub struct History {
    out: Mutex<BufWriter<std::fs::File>>,
    started: Instant,
    next_process: AtomicU64,
}

impl History {
    /// Creates (or truncates) the history file at `path`.
    pub fn create(path: impl AsRef<Path>) -> std::io::Result<Arc<History>> {
        let file = std::fs::File::create(path)?;
        Ok(Arc::new(History {
            out: Mutex::new(BufWriter::new(file)),
            started: Instant::now(),
            next_process: AtomicU64::new(0),
        }))
    }

    /// A fresh process id.
    pub fn new_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    fn record(&self, process: u64, kind: EventType, f: Function, key: &[u8], value: Option<&[u8]>) {
        let event = Event {
            process,
            kind,
            f,
            key: String::from_utf8_lossy(key).into_owned(),
            value: value.map(describe_value),
            time_ns: self.started.elapsed().as_nanos() as u64,
        };
        let line = serde_json::to_string(&event).expect("events always serialize");
        let mut out = self.out.lock();
        // A failing disk must not fail the operation being recorded; flush reports it.
        let _ = writeln!(out, "{line}");
    }

    /// Nanoseconds since the history started (the clock of `time_ns`), for
    /// marking moments (a fault, a move's start) beside the events.
    pub fn elapsed_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Writes buffered events to the file.
    pub fn flush(&self) -> std::io::Result<()> {
        self.out.lock().flush()
    }
}

/// A client whose every operation is recorded in a [`History`] as one process.
///
/// Use one per task: a process runs one operation at a time. After an
/// operation with an unknown outcome the recorder moves to a new process id,
/// as Jepsen does, since the old one may still be in flight.
pub struct RecordingClient<T: Transport = DataTransport> {
    client: Client<T>,
    history: Arc<History>,
    process: u64,
}

impl<T: Transport> RecordingClient<T> {
    /// Records `client`'s operations into `history`.
    pub fn new(client: Client<T>, history: Arc<History>) -> RecordingClient<T> {
        let process = history.new_process();
        RecordingClient { client, history, process }
    }

    /// The underlying client.
    pub fn client(&self) -> &Client<T> {
        &self.client
    }

    /// A recorded get.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Bytes>, ClientError> {
        self.history.record(self.process, EventType::Invoke, Function::Read, key, None);
        let result = self.client.get(key).await;
        match &result {
            Ok(value) => {
                self.history.record(self.process, EventType::Ok, Function::Read, key, value.as_deref())
            }
            // A failed read changed nothing.
            Err(_) => self.history.record(self.process, EventType::Fail, Function::Read, key, None),
        }
        result
    }

    /// A recorded put.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        self.history.record(self.process, EventType::Invoke, Function::Write, key, Some(value));
        let result = self.client.put(key, value).await;
        self.complete(Function::Write, key, Some(value), result.as_ref().err());
        result
    }

    /// A recorded delete.
    pub async fn delete(&mut self, key: &[u8]) -> Result<bool, ClientError> {
        self.history.record(self.process, EventType::Invoke, Function::Delete, key, None);
        let result = self.client.delete(key).await;
        self.complete(Function::Delete, key, None, result.as_ref().err());
        result
    }

    fn complete(&mut self, f: Function, key: &[u8], value: Option<&[u8]>, err: Option<&ClientError>) {
        match err {
            None => self.history.record(self.process, EventType::Ok, f, key, value),
            // Refused before it was sent: certainly not applied.
            Some(ClientError::TooLarge(_) | ClientError::NoRoute(_)) => {
                self.history.record(self.process, EventType::Fail, f, key, value)
            }
            Some(_) => {
                self.history.record(self.process, EventType::Info, f, key, value);
                self.process = self.history.new_process();
            }
        }
    }
}
