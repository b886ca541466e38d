//! [`Session`] implementations: a Fulva client and a Redis connection.

use crate::workload::Session;
use fulva_client::Client;
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A closed-loop task's handle on a Fulva cluster (clones share sockets).
#[derive(Clone)]
pub struct FulvaSession {
    /// The client.
    pub client: Client,
}

impl Session for FulvaSession {
    async fn get(&mut self, key: &[u8]) -> anyhow::Result<()> {
        self.client.get(key).await?;
        Ok(())
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.client.put(key, value).await?;
        Ok(())
    }

    fn bucket(&self, key: &[u8]) -> usize {
        self.client.owner_of(key).unwrap_or(0) as usize
    }
}

/// One connection to a Redis server, speaking just enough RESP for GET and SET.
pub struct RedisSession {
    stream: BufReader<TcpStream>,
    out: Vec<u8>,
    line: String,
    scratch: Vec<u8>,
}

impl RedisSession {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<RedisSession> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RedisSession {
            stream: BufReader::new(stream),
            out: Vec::new(),
            line: String::new(),
            scratch: Vec::new(),
        })
    }

    fn push_command(&mut self, parts: &[&[u8]]) {
        self.out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
        for part in parts {
            self.out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            self.out.extend_from_slice(part);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.stream.get_mut().write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Reads one reply; returns the bulk payload length (or 0 for simple
    /// replies), or the error line Redis answered with.
    async fn read_reply_or_error(&mut self) -> anyhow::Result<Result<usize, String>> {
        self.line.clear();
        if self.stream.read_line(&mut self.line).await? == 0 {
            anyhow::bail!("redis closed the connection");
        }
        let line = self.line.trim_end();
        match line.as_bytes().first() {
            Some(b'+') | Some(b':') => Ok(Ok(0)),
            Some(b'-') => Ok(Err(line[1..].to_string())),
            Some(b'$') => {
                let len: i64 = line[1..].parse()?;
                if len < 0 {
                    return Ok(Ok(0));
                }
                self.scratch.resize(len as usize + 2, 0);
                self.stream.read_exact(&mut self.scratch).await?;
                Ok(Ok(len as usize))
            }
            _ => anyhow::bail!("unexpected redis reply {line:?}"),
        }
    }

    async fn read_reply(&mut self) -> anyhow::Result<usize> {
        self.read_reply_or_error().await?.map_err(|e| anyhow::anyhow!("redis error: {e}"))
    }

    /// Sends a command and waits for its reply.
    pub async fn command(&mut self, parts: &[&[u8]]) -> anyhow::Result<usize> {
        self.push_command(parts);
        self.flush().await?;
        self.read_reply().await
    }

    /// Sends a command; a Redis error reply (such as MOVED or ASK) comes back as `Err` text.
    pub async fn command_or_error(&mut self, parts: &[&[u8]]) -> anyhow::Result<Result<usize, String>> {
        self.push_command(parts);
        self.flush().await?;
        self.read_reply_or_error().await
    }

    /// Sends `ASKING` and then `parts` in one write (a one-off redirect during resharding).
    pub async fn asking(&mut self, parts: &[&[u8]]) -> anyhow::Result<Result<usize, String>> {
        self.push_command(&[b"ASKING"]);
        self.push_command(parts);
        self.flush().await?;
        self.read_reply().await?;
        self.read_reply_or_error().await
    }

    /// The payload of the last bulk reply.
    pub fn last_bulk(&self) -> &[u8] {
        &self.scratch[..self.scratch.len().saturating_sub(2)]
    }

    /// Sets many keys with one round trip per `batch` commands (loading).
    pub async fn set_pipelined(
        &mut self,
        keys: std::ops::Range<u64>,
        value: &[u8],
        batch: usize,
    ) -> anyhow::Result<()> {
        let mut key = Vec::new();
        let mut pending = 0;
        for i in keys {
            crate::workload::key_into(i, &mut key);
            let key = key.clone();
            self.push_command(&[b"SET", &key, value]);
            pending += 1;
            if pending == batch {
                self.flush().await?;
                for _ in 0..pending {
                    self.read_reply().await?;
                }
                pending = 0;
            }
        }
        self.flush().await?;
        for _ in 0..pending {
            self.read_reply().await?;
        }
        Ok(())
    }
}

impl Session for RedisSession {
    async fn get(&mut self, key: &[u8]) -> anyhow::Result<()> {
        self.command(&[b"GET", key]).await.map(|_| ())
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.command(&[b"SET", key, value]).await.map(|_| ())
    }

    fn bucket(&self, _key: &[u8]) -> usize {
        0
    }
}
