//! Prints the CustomResourceDefinitions generated from the Rust types as
//! YAML (`cargo run -p fulva-operator --bin crdgen > crds/fulvacluster.yaml`).

use kube::CustomResourceExt;

fn main() {
    let crd = fulva_operator::crd::FulvaCluster::crd();
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
