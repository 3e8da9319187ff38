//! Prints, as a JSON array, the objects the operator applies for the
//! `spec.expose` of `examples/chatcluster-gateway.yaml` and
//! `examples/chatcluster-ingress.yaml` (namespace `chat`, 3 pods), so that
//! scripts/validate-k8s.py can check them against the Kubernetes and
//! Gateway API schemas without a cluster:
//! `cargo run -p operator --bin exposegen > operator/tests/data/expose-objects.json`
//! (operator/tests/expose_objects.rs fails when the file drifts).

use operator::crd::ChatCluster;

const EXAMPLES: [(&str, &str); 2] = [
    (
        "examples/chatcluster-gateway.yaml",
        include_str!("../../../examples/chatcluster-gateway.yaml"),
    ),
    (
        "examples/chatcluster-ingress.yaml",
        include_str!("../../../examples/chatcluster-ingress.yaml"),
    ),
];

fn main() -> anyhow::Result<()> {
    let mut objects = Vec::new();
    for (path, yaml) in EXAMPLES {
        let mut cc: ChatCluster = serde_saphyr::from_str(yaml)
            .map_err(|e| anyhow::anyhow!("parsing {path} as a ChatCluster: {e}"))?;
        // As the API server would have it: a namespace and a UID, which the
        // owner references carry.
        cc.metadata.namespace = Some("chat".into());
        cc.metadata.uid = Some("00000000-0000-4000-8000-000000000015".into());
        operator::controller::validate(&cc.spec)
            .map_err(|e| anyhow::anyhow!("{path} is not a valid ChatCluster: {e}"))?;
        let replicas = cc.spec.replicas;
        objects.extend(operator::expose::desired_objects(&cc, replicas));
    }
    println!("{}", serde_json::to_string_pretty(&objects)?);
    Ok(())
}
