//! The node's modules depend downwards only, so each can be read (and
//! tested) without the ones above it: `ownership` (which includes the state
//! of a move coming in) knows nothing of the data path or the migration
//! engine, and the data path (`handler`) nothing of the engine that drives
//! moves.

use std::collections::BTreeSet;
use std::path::Path;

/// Each module's layer; a module may use modules of lower layers only.
const LAYERS: &[(&str, u32)] = &[
    ("config", 0),
    ("store", 0),
    ("metrics", 0),
    ("records", 0),
    ("heat", 0),
    ("ownership", 1),
    ("handler", 2),
    ("migration", 3),
    ("control", 4),
    ("server", 4),
    ("http", 4),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(name, _)| *name == module).map(|&(_, layer)| layer)
}

/// The crate's top-level modules a source file names (`crate::x` and
/// `crate::{x, y::z}`), outside comments.
fn crate_modules_used(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|line| line.find("//").map_or(line, |at| &line[..at]))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut used = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    used.insert(name);
                }
            }
        } else {
            used.insert(ident(rest));
        }
    }
    used
}

/// The top-level module a file under `src/` belongs to.
fn module_of(relative: &Path) -> String {
    let first = relative.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    files_under(&src, &mut files);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = module_of(relative);
        if module == "lib" || module == "bin" {
            continue;
        }
        let own =
            layer(&module).unwrap_or_else(|| panic!("{module} (src/{}) has no layer", relative.display()));
        for used in crate_modules_used(&std::fs::read_to_string(&file).unwrap()) {
            let Some(theirs) = layer(&used) else { continue };
            if used != module && theirs >= own {
                wrong.push(format!("src/{} ({module}) uses {used}", relative.display()));
            }
        }
        checked += 1;
    }
    assert!(checked >= LAYERS.len(), "only {checked} files found under {}", src.display());
    assert!(wrong.is_empty(), "uses of a module at the same or a higher layer:\n{}", wrong.join("\n"));
}

#[test]
fn the_scan_sees_plain_and_grouped_uses_but_not_comments() {
    let source = "use crate::handler::Handler;\nuse crate::{store::Store, metrics};\n// crate::migration\nlet x = crate::ownership::f(); // crate::control\n";
    let used: Vec<String> = crate_modules_used(source).into_iter().collect();
    assert_eq!(used, ["handler", "metrics", "ownership", "store"]);
}
