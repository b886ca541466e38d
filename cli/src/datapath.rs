//! `--transport` and its DPDK settings, shared by every command that opens a
//! client (`fulva kv`, `fulva bench kv`).

use fulva_client::ClientConfig;

/// The data path a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportName {
    /// Kernel UDP sockets.
    Kernel,
    /// DPDK (needs a build with `--features dpdk`).
    Dpdk,
}

impl TransportName {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TransportName::Kernel => "kernel",
            TransportName::Dpdk => "dpdk",
        }
    }
}

/// Client-side DPDK settings.
#[derive(clap::Args, Debug, Clone)]
pub struct DpdkClientArgs {
    /// DPDK: the port (a PCI address or a vdev name such as `net_memif0`).
    #[arg(long, env = "FULVA_DPDK_PORT")]
    pub dpdk_port: Option<String>,
    /// DPDK: EAL arguments, space-separated, e.g. `--no-huge --no-pci --vdev net_memif0,role=client`.
    #[arg(long, env = "FULVA_EAL_ARGS", default_value = "", allow_hyphen_values = true)]
    pub eal_args: String,
    /// DPDK: this client's IPv4 address and UDP port on the DPDK network.
    #[arg(long, env = "FULVA_DPDK_ADDR", default_value = "10.9.0.100:7200")]
    pub dpdk_addr: std::net::SocketAddrV4,
    /// DPDK: the port's MTU (1500; up to 9000 with jumbo frames), as the nodes'.
    #[arg(long, env = "FULVA_DPDK_MTU", default_value_t = 1500, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(576..=9000))]
    pub dpdk_mtu: usize,
}

impl DpdkClientArgs {
    /// Sets `config` to speak `transport`.
    pub fn apply(&self, transport: TransportName, config: &mut ClientConfig) -> anyhow::Result<()> {
        match transport {
            TransportName::Kernel => Ok(()),
            TransportName::Dpdk => self.apply_dpdk(config),
        }
    }

    #[cfg(feature = "dpdk")]
    fn apply_dpdk(&self, config: &mut ClientConfig) -> anyhow::Result<()> {
        let port =
            self.dpdk_port.clone().ok_or_else(|| anyhow::anyhow!("--transport dpdk needs --dpdk-port"))?;
        let eal = self.eal_args.split_whitespace().map(str::to_string).collect();
        config.transport = fulva_client::TransportChoice::Dpdk(fulva_dpdk::DpdkConfig {
            mtu: self.dpdk_mtu,
            ..fulva_dpdk::DpdkConfig::new(eal, port, self.dpdk_addr)
        });
        Ok(())
    }

    #[cfg(not(feature = "dpdk"))]
    fn apply_dpdk(&self, _config: &mut ClientConfig) -> anyhow::Result<()> {
        anyhow::bail!(
            "this fulva was built without the `dpdk` feature: \
             cargo build --release -p fulva-cli --features dpdk (needs libdpdk-dev)"
        )
    }
}
