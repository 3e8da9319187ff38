//! The OpenAPI document that client SDKs generate their types from is
//! committed at `clients/typescript/openapi.json`. This fails when it
//! drifts from what the server serves; `UPDATE_OPENAPI=1 cargo test -p
//! api-server --test openapi_document` rewrites it.

use std::path::PathBuf;

#[test]
fn committed_openapi_document_matches_the_server() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/typescript/openapi.json");
    let mut current = serde_json::to_string_pretty(&api_server::openapi::spec())
        .expect("the document serialises");
    current.push('\n');
    if std::env::var("UPDATE_OPENAPI").as_deref() == Ok("1") {
        std::fs::write(&path, &current).expect("write openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == current,
        "{} is out of date: run UPDATE_OPENAPI=1 cargo test -p api-server --test openapi_document, \
         then `npm run generate` in clients/typescript",
        path.display()
    );
}
