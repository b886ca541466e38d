//! A real `redis-server` started and stopped by a benchmark.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// A redis-server child process on loopback; killed when dropped.
pub struct RedisServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl RedisServer {
    /// Starts `binary` on a free loopback port with persistence off and waits until it answers.
    pub async fn start(binary: &str) -> anyhow::Result<RedisServer> {
        RedisServer::start_with(binary, &[]).await
    }

    /// Like [`RedisServer::start`], with extra arguments (cluster mode).
    pub async fn start_with(binary: &str, extra: &[String]) -> anyhow::Result<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(extra)
            .args(["--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("cannot start {binary}: {e} (install it with `apt-get install redis-server`)")
            })?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let server = RedisServer { child, addr };
        let started = Instant::now();
        loop {
            if let Ok(mut s) = fulva_local::sessions::RedisSession::connect(addr).await {
                if s.command(&[b"PING"]).await.is_ok() {
                    return Ok(server);
                }
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not answer within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Process id of the server.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the server (by its pid) and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
