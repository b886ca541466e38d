//! `fulva certs` and the TLS flags the tools share: a cluster's own CA and
//! certificates for `fulva up`, `fulva node`, `fulva coordinator` and the
//! tools that call the control endpoint.

use fulva_tls::{Role, TlsFiles};
use std::path::PathBuf;
use std::time::Duration;

/// How a tool reaches a control endpoint that runs on TLS.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ToolTlsArgs {
    /// Directory with the cluster's `ca.crt` and this tool's certificate
    /// (`admin.crt`/`admin.key` for commands that change the map,
    /// `client.crt`/`client.key` for `fulva kv`), as `fulva up` or `fulva
    /// certs` writes it. Without it the endpoint is called over plain TCP.
    #[arg(long = "tls-dir", env = "FULVA_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
}

impl ToolTlsArgs {
    /// The files of `role`, if a directory was given.
    pub fn files(&self, role: Role) -> Option<TlsFiles> {
        self.tls_dir.as_deref().map(|dir| TlsFiles::in_dir(dir, role))
    }
}

/// Options of `fulva certs`.
#[derive(clap::Args, Debug, Clone)]
pub struct CertsArgs {
    /// Directory to write to (created if missing). A CA already there
    /// (`ca.crt`, `ca.key`) signs the new certificates; otherwise a new one
    /// is made.
    #[arg(long)]
    pub dir: PathBuf,
    /// Node ids to certify (`node-ID.crt`); repeat or separate with commas.
    #[arg(long = "node", value_delimiter = ',', default_values_t = [0u32, 1, 2])]
    pub nodes: Vec<u32>,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub days: u64,
    /// Name of the cluster, written into a new CA's name.
    #[arg(long, default_value = "local")]
    pub cluster: String,
}

/// Runs `fulva certs`: the CA, then a certificate for the coordinator, an
/// admin, a client and each node.
pub fn certs(args: CertsArgs) -> anyhow::Result<bool> {
    let mut roles = vec![Role::Coordinator, Role::Admin, Role::Client];
    roles.extend(args.nodes.iter().copied().map(Role::Node));
    let validity = Duration::from_secs(args.days * 24 * 3600);
    let written = fulva_tls::generate_dir(&args.dir, &args.cluster, &roles, validity)?;
    for path in written.iter().filter(|p| p.extension().is_some_and(|e| e == "crt")) {
        crate::out!("{}", path.display());
    }
    eprintln!(
        "fulva certs: CA {} signed {} certificates valid for {} days (keys beside them, readable by you only)",
        args.dir.join("ca.crt").display(),
        roles.len(),
        args.days
    );
    Ok(true)
}
