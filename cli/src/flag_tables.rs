//! The flag tables in README.md and docs/, generated from the clap
//! definitions so they cannot drift from the code.
//!
//! A table lives between two markers naming the command it describes:
//!
//! ```text
//! <!-- flags: fulva bench kv -->
//! | flag | env | default | meaning |
//! ...
//! <!-- end flags -->
//! ```
//!
//! `scripts/gen-flag-tables` rewrites every such region ([`update`]); CI and
//! a test fail when a region differs from what the definitions give.

use clap::{ArgAction, Command};
use std::fmt::Write as _;

const START: &str = "<!-- flags: ";
const END: &str = "<!-- end flags -->";

/// Why a document's flag regions cannot be generated.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagTableError {
    /// A marker names a command the definitions do not have.
    #[error("line {line}: no command {path:?}")]
    UnknownCommand {
        /// 1-based line of the marker.
        line: usize,
        /// The command path as written.
        path: String,
    },
    /// A region has no end marker.
    #[error("line {line}: the flag table of {path:?} has no `{END}`")]
    Unterminated {
        /// 1-based line of the marker.
        line: usize,
        /// The command path as written.
        path: String,
    },
}

/// The subcommand at `path` ("fulva bench kv": the root is named first).
pub fn find<'a>(root: &'a Command, path: &str) -> Option<&'a Command> {
    let mut words = path.split_whitespace();
    if words.next()? != root.get_name() {
        return None;
    }
    words.try_fold(root, |cmd, word| cmd.find_subcommand(word))
}

fn cell(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
}

/// The markdown table of `cmd`'s flags and arguments: flag, environment
/// variable, default and meaning (the flag's doc comment).
pub fn table(cmd: &Command) -> String {
    let args: Vec<_> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    let with_env = args.iter().any(|a| a.get_env().is_some());
    let mut out = String::new();
    if with_env {
        out.push_str("| flag | env | default | meaning |\n|---|---|---|---|\n");
    } else {
        out.push_str("| flag | default | meaning |\n|---|---|---|\n");
    }
    for arg in args {
        let takes_value = matches!(arg.get_action(), ArgAction::Set | ArgAction::Append);
        let values: Vec<String> =
            arg.get_possible_values().iter().map(|v| v.get_name().to_string()).collect();
        let value = if !values.is_empty() {
            values.join("|")
        } else {
            arg.get_value_names()
                .map(|names| names.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
        };
        let flag = match arg.get_long() {
            Some(long) if takes_value => format!("--{long} {value}"),
            Some(long) => format!("--{long}"),
            None => value,
        };
        let defaults: Vec<String> =
            arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let default = if defaults.iter().all(String::is_empty) && !defaults.is_empty() {
            "empty".to_string()
        } else if !defaults.is_empty() {
            format!("`{}`", cell(&defaults.join(",")))
        } else if arg.is_required_set() {
            "(required)".to_string()
        } else if takes_value {
            "unset".to_string()
        } else {
            "off".to_string()
        };
        let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
        let repeat = if matches!(arg.get_action(), ArgAction::Append) { " (repeat for more)" } else { "" };
        let _ = write!(out, "| `{}` ", cell(&flag));
        if with_env {
            match arg.get_env() {
                Some(env) => {
                    let _ = write!(out, "| `{}` ", env.to_string_lossy());
                }
                None => out.push_str("| "),
            }
        }
        let _ = writeln!(out, "| {default} | {}{repeat} |", cell(&help));
    }
    out
}

/// `doc` with every flag region rewritten from `root`'s definitions.
pub fn update(doc: &str, root: &Command) -> Result<String, FlagTableError> {
    let mut out = String::with_capacity(doc.len());
    let mut lines = doc.split_inclusive('\n').enumerate();
    while let Some((i, line)) = lines.next() {
        out.push_str(line);
        let Some(path) = line.trim().strip_prefix(START).and_then(|rest| rest.strip_suffix("-->")) else {
            continue;
        };
        let path = path.trim().to_string();
        let cmd =
            find(root, &path).ok_or(FlagTableError::UnknownCommand { line: i + 1, path: path.clone() })?;
        out.push_str(&table(cmd));
        // Skip the old table up to the end marker, which stays.
        loop {
            match lines.next() {
                Some((_, end)) if end.trim() == END => {
                    out.push_str(end);
                    break;
                }
                Some(_) => {}
                None => return Err(FlagTableError::Unterminated { line: i + 1, path }),
            }
        }
    }
    Ok(out)
}

/// The documents that may hold flag tables: README.md and docs/*.md under `root`.
pub fn documents(root: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut paths = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Every command path that has a flag region in `docs`.
pub fn documented(docs: &[&str]) -> Vec<String> {
    docs.iter()
        .flat_map(|doc| doc.lines())
        .filter_map(|l| l.trim().strip_prefix(START).and_then(|r| r.strip_suffix("-->")))
        .map(|p| p.trim().to_string())
        .collect()
}

/// Every command path below `root` that takes flags or arguments, depth first.
pub fn commands(root: &Command) -> Vec<String> {
    fn walk(cmd: &Command, prefix: &str, out: &mut Vec<String>) {
        let path = if prefix.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{prefix} {}", cmd.get_name())
        };
        let has_args = cmd.get_arguments().any(|a| !matches!(a.get_id().as_str(), "help" | "version"));
        if has_args && !prefix.is_empty() {
            out.push(path.clone());
        }
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, &path, out);
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn demo() -> Command {
        Command::new("demo").subcommand(
            Command::new("run")
                .arg(Arg::new("rate").long("rate").default_value("5").help("Operations per second"))
                .arg(Arg::new("fast").long("fast").action(ArgAction::SetTrue).help("Skip the | check")),
        )
    }

    #[test]
    fn a_region_is_rewritten_and_the_text_around_it_kept() {
        let doc = "intro\n<!-- flags: demo run -->\n| stale |\n<!-- end flags -->\noutro\n";
        let new = update(doc, &demo()).unwrap();
        assert_eq!(
            new,
            "intro\n<!-- flags: demo run -->\n| flag | default | meaning |\n|---|---|---|\n\
             | `--rate RATE` | `5` | Operations per second |\n| `--fast` | off | Skip the \\| check |\n\
             <!-- end flags -->\noutro\n"
        );
        // Generated once, it is stable.
        assert_eq!(update(&new, &demo()).unwrap(), new);
    }

    #[test]
    fn unknown_commands_and_open_regions_are_refused() {
        let unknown = "<!-- flags: demo walk -->\n<!-- end flags -->\n";
        assert_eq!(
            update(unknown, &demo()),
            Err(FlagTableError::UnknownCommand { line: 1, path: "demo walk".into() })
        );
        let open = "x\n<!-- flags: demo run -->\n| a |\n";
        assert_eq!(
            update(open, &demo()),
            Err(FlagTableError::Unterminated { line: 2, path: "demo run".into() })
        );
    }
}
