//! `/openapi.json`, generated from the handler annotations and the wire
//! types' `ToSchema` derives, never written by hand.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{auth, connect, messages, reads, rooms};

#[derive(OpenApi)]
#[openapi(
    info(title = "chat API", version = "1.1.0",
         description = "REST API of the chat service (client contract v1.1). The WebSocket frames are described under components as ClientFrame and ServerFrame."),
    paths(
        auth::issue_token,
        rooms::create_room, rooms::list_rooms, rooms::get_room, rooms::list_members,
        rooms::add_member, rooms::remove_member, rooms::list_user_rooms,
        messages::post_message, messages::list_messages,
        reads::mark_read, reads::list_reads,
        connect::connect, connect::list_servers,
    ),
    // Not used by any REST operation: the WebSocket contract, here so that
    // clients generate those types from the same document.
    components(schemas(chat_protocol::ClientFrame, chat_protocol::ServerFrame)),
    modifiers(&BearerAuth, &CommonErrors)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Answers every operation can give besides its own: 401 where a token is
/// needed, 400 and 413 where there is a body, 503 when storage is down.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                let mut add = |code: &str, description: &str| {
                    responses
                        .entry(code.to_owned())
                        .or_insert_with(|| error(description).into());
                };
                if path != "/v1/auth/token" {
                    add("401", "missing, invalid or expired token (unauthorized)");
                }
                if operation.request_body.is_some() {
                    add("400", "malformed body (invalid_request)");
                    add(
                        "413",
                        "request body over the size limit (payload_too_large)",
                    );
                }
                if path.starts_with("/v1/rooms/") {
                    add("400", "invalid parameter (invalid_request)");
                }
                add("503", "storage unavailable (unavailable)");
            }
        }
    }
}

pub fn spec() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    #[test]
    fn spec_lists_every_contract_path() {
        let json = serde_json::to_value(super::spec()).unwrap();
        let paths = json["paths"].as_object().unwrap();
        for p in [
            "/v1/auth/token",
            "/v1/rooms",
            "/v1/rooms/{room}",
            "/v1/rooms/{room}/members",
            "/v1/rooms/{room}/members/{user}",
            "/v1/rooms/{room}/messages",
            "/v1/connect",
            "/v1/servers",
        ] {
            assert!(paths.contains_key(p), "{p}");
        }
        assert!(json["components"]["schemas"]["Message"].is_object());
    }
}
