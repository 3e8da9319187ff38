//! Prints the ChatCluster CRD YAML: `cargo run -p operator --bin crdgen > crds/chatcluster.yaml`.

fn main() {
    print!("{}", operator::crd::crd_yaml());
}
