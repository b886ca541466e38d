//! Rewrites the flag tables of README.md and docs/*.md from the `fulva`
//! command's definitions (`scripts/gen-flag-tables`).

use clap::CommandFactory;
use fulva_cli::command::Cli;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let cli = Cli::command();
    for path in fulva_cli::flag_tables::documents(&root)? {
        let doc = std::fs::read_to_string(&path)?;
        let new = fulva_cli::flag_tables::update(&doc, &cli)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if new != doc {
            std::fs::write(&path, new)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
