//! `crds/chatcluster.yaml` must be exactly what the generator prints, so the
//! checked-in CRD (and the Helm chart's copy) never drifts from the types.

#[test]
fn checked_in_crd_matches_the_generator() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let generated = operator::crd::crd_yaml();
    for path in ["crds/chatcluster.yaml", "charts/chat/crds/chatcluster.yaml"] {
        let file = root.join(path);
        let checked_in = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        assert!(
            checked_in == generated,
            "{path} is stale: run `cargo run -p operator --bin crdgen > {path}`"
        );
    }
}

#[test]
fn crd_has_the_scale_subresource_and_cel_rules() {
    let yaml = operator::crd::crd_yaml();
    assert!(yaml.contains("labelSelectorPath: .status.labelSelector"));
    assert!(yaml.contains("specReplicasPath: .spec.replicas"));
    assert!(yaml.contains("status: {}"));
    assert!(yaml.contains("autoscaling.minReplicas must be <= autoscaling.maxReplicas"));
    assert!(yaml.contains("give exactly one of redis.urls or redis.secretKeyRef"));
    assert!(yaml.contains("shortNames:\n    - chat"));
}

#[test]
fn crd_refuses_env_entries_that_repeat_operator_variables() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(operator::crd::ChatCluster::crd()).unwrap();
    let name = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["env"]["items"]["properties"]["name"];
    let refused: Vec<&str> = name["not"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("no not/enum on env[].name: {name}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(refused, operator::resources::OPERATOR_ENV);
}
