//! Prints a CustomResourceDefinition generated from the Rust types as YAML:
//! `crdgen [fulvacluster|fulvarebalance]` (default fulvacluster);
//! `scripts/gen-crds` writes both into crds/.

use kube::CustomResourceExt;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "fulvacluster".to_string());
    let crd = match which.as_str() {
        "fulvacluster" => fulva_operator::crd::FulvaCluster::crd(),
        "fulvarebalance" => fulva_operator::rebalance_crd::FulvaRebalance::crd(),
        other => {
            eprintln!("crdgen: unknown resource {other:?} (fulvacluster or fulvarebalance)");
            std::process::exit(2);
        }
    };
    let yaml = serde_yaml_ng::to_string(&crd).expect("a CRD serializes to YAML");
    // YAML 1.1 readers (kubectl's among them) take a bare `off` for false:
    // quote the enum values that look like booleans there.
    for line in yaml.lines() {
        let (indent, item) = line.split_at(line.len() - line.trim_start().len());
        match item.strip_prefix("- ") {
            Some(v) if ["off", "on", "yes", "no", "y", "n"].contains(&v.to_ascii_lowercase().as_str()) => {
                println!("{indent}- '{v}'")
            }
            _ => println!("{line}"),
        }
    }
}
