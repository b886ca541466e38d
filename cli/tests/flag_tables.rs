//! The flag tables of README.md and docs/ are what the command definitions
//! give (regenerate them with `scripts/gen-flag-tables`), and every command
//! that takes flags has one.

use clap::CommandFactory;
use fulva_cli::command::Cli;
use fulva_cli::flag_tables;
use std::path::Path;

fn docs() -> Vec<(std::path::PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    flag_tables::documents(&root)
        .unwrap()
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

#[test]
fn every_flag_table_matches_the_command_definitions() {
    let cli = Cli::command();
    for (path, text) in docs() {
        let generated =
            flag_tables::update(&text, &cli).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(generated == text, "{} is stale: run scripts/gen-flag-tables", path.display());
    }
}

#[test]
fn every_command_with_flags_has_a_table() {
    let texts: Vec<String> = docs().into_iter().map(|(_, t)| t).collect();
    let documented = flag_tables::documented(&texts.iter().map(String::as_str).collect::<Vec<_>>());
    let missing: Vec<String> =
        flag_tables::commands(&Cli::command()).into_iter().filter(|c| !documented.contains(c)).collect();
    assert!(missing.is_empty(), "commands without a flag table in README.md or docs/: {missing:?}");
}
