//! Every flag of `fulva-operator` has its row, with its environment
//! variable, in docs/operator.md's table.

use clap::{Args, Command};
use fulva_operator::app::OperatorConfig;

#[test]
fn every_operator_flag_is_in_the_docs_table() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operator.md")).unwrap();
    let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| `--")).collect();
    let cmd = OperatorConfig::augment_args(Command::new("fulva-operator"));
    let mut flags = 0;
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        flags += 1;
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("| `--{long}`")))
            .unwrap_or_else(|| panic!("--{long} has no row in docs/operator.md"));
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            assert!(row.contains(&format!("`{env}`")), "--{long}: its row does not name {env}: {row}");
        }
    }
    assert!(flags >= 7, "the operator's flags were read ({flags})");
}
