//! Child processes: [`ChildGuard`] (any child, killed by its PID when
//! dropped), [`NodeProcess`] (a storage node in its own process, for
//! benchmarks and tests) and the CPU time a server process used (for ops/s
//! per server core).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// A child process this program started, killed (by its PID, through its
/// handle) and reaped when dropped, so a failing test leaves nothing running.
pub struct ChildGuard(std::process::Child);

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: std::process::Child) -> ChildGuard {
        ChildGuard(child)
    }

    /// The child's handle (its pipes, its PID).
    pub fn child(&mut self) -> &mut std::process::Child {
        &mut self.0
    }

    /// Kills the child now and waits for it.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()?;
        self.0.wait().map(|_| ())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds (user + system) process `pid` has used so far, from `/proc`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line (utime, stime) are 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// CPU seconds (user + system) of every child process of this one that has
/// exited and been waited for (`getrusage(RUSAGE_CHILDREN)`): around a
/// command run to completion, the difference is that command's CPU.
pub fn finished_children_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into `usage`, which lives for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// One `fulva node` child process; killed (by its pid) when dropped.
pub struct NodeProcess {
    child: Child,
    /// Data-path address it serves on.
    pub data_addr: SocketAddr,
    /// gRPC control address.
    pub control_addr: SocketAddr,
    /// HTTP address of its /metrics.
    pub metrics_addr: SocketAddr,
    log: PathBuf,
}

impl NodeProcess {
    /// Starts `binary node ARGS --node-id ID --data-addr DATA --control-addr
    /// (free port) --metrics-addr (free port) --transfer-addr (free port)`, its stderr going to `log`, and
    /// waits until its control port answers.
    pub async fn start(
        binary: &Path,
        node_id: u32,
        args: &[String],
        data_addr: SocketAddr,
        log: PathBuf,
    ) -> anyhow::Result<NodeProcess> {
        let free = || -> anyhow::Result<SocketAddr> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
        };
        let control_addr = free()?;
        let metrics_addr = free()?;
        let transfer_addr = free()?;
        // Plain TCP unless the caller hands the node its TLS files.
        let insecure = (!args.iter().any(|a| a.starts_with("--tls-dir"))).then_some("--insecure");
        let child = Command::new(binary)
            .arg("node")
            .arg(format!("--node-id={node_id}"))
            .arg(format!("--data-addr={data_addr}"))
            .arg(format!("--control-addr={control_addr}"))
            .arg(format!("--metrics-addr={metrics_addr}"))
            .arg(format!("--transfer-addr={transfer_addr}"))
            .args(args)
            .args(insecure)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {} node: {e}", binary.display()))?;
        let mut node = NodeProcess { child, data_addr, control_addr, metrics_addr, log };
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(control_addr).await.is_ok() {
                return Ok(node);
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                anyhow::bail!("the node exited ({status}):\n{}", node.log_tail());
            }
            if started.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("the node did not listen on {control_addr} within 30 s:\n{}", node.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The last lines the node wrote to its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the node (by its pid) and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The sum of every sample of metric `name` (all label sets) a node's
/// /metrics endpoint at `addr` serves; 0 when absent or unreachable.
pub async fn scrape_sum(addr: SocketAddr, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: node\r\n\r\n").await.ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    let Ok(Some(body)) = tokio::time::timeout(Duration::from_secs(2), fetch).await else { return 0.0 };
    metric_sum(&body, name)
}

/// The sum of every sample of metric `name` in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_summed_over_its_label_sets_and_nothing_else() {
        let text = "# HELP m_total help\n# TYPE m_total counter\nm_total{side=\"source\"} 1.5\n\
                    m_total{side=\"destination\"} 2.25\nm_total_other 100\nm_totalx{a=\"b\"} 7\n";
        assert_eq!(metric_sum(text, "m_total"), 3.75);
        assert_eq!(metric_sum(text, "m_total_other"), 100.0);
        assert_eq!(metric_sum(text, "absent"), 0.0);
    }
}
