//! `operator/tests/data/expose-objects.json` must be what `exposegen`
//! prints: scripts/validate-k8s.py checks that file against the Kubernetes
//! and Gateway API schemas, so it has to be the operator's real output.

#[test]
fn checked_in_expose_objects_match_the_generator() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_exposegen"))
        .output()
        .expect("running exposegen");
    assert!(
        output.status.success(),
        "exposegen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/expose-objects.json"
    );
    let checked_in =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    assert!(
        checked_in.as_bytes() == output.stdout,
        "{path} is stale: run `cargo run -p operator --bin exposegen > operator/tests/data/expose-objects.json`"
    );
}

#[test]
fn the_examples_expose_every_pod_once() {
    let generated = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/expose-objects.json"
    ))
    .unwrap();
    let objects: Vec<serde_json::Value> = serde_json::from_str(&generated).unwrap();
    let names: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    let pods = ["chat-0-ws", "chat-1-ws", "chat-2-ws"];
    let mut expected: Vec<String> = pods.iter().map(|p| format!("Service/{p}")).collect();
    expected.extend(pods.iter().map(|p| format!("HTTPRoute/{p}")));
    expected.extend(pods.iter().map(|p| format!("Service/{p}")));
    expected.push("Ingress/chat-ws".into());
    assert_eq!(names, expected);
}
