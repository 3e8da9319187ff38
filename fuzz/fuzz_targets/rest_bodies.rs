//! REST request bodies on arbitrary input, decoded exactly as the API server
//! does (serde into the wire types, then the limit checks): no panic, and
//! anything accepted serialises back.
#![no_main]

use chat_protocol::rest::{CreateRoomRequest, PostMessageRequest, ReadRequest, TokenRequest};
use chat_protocol::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(req) = serde_json::from_slice::<PostMessageRequest>(data) {
        let _ = limits.check_message(&req.body, req.client_msg_id.as_deref());
        serde_json::to_string(&req).unwrap();
    }
    if let Ok(req) = serde_json::from_slice::<CreateRoomRequest>(data) {
        let _ = limits.check_room_name(&req.name);
        for m in req.members.iter().flatten().chain(&req.created_by) {
            let _ = chat_protocol::ids::is_valid_user_id(m);
        }
        serde_json::to_string(&req).unwrap();
    }
    if let Ok(req) = serde_json::from_slice::<TokenRequest>(data) {
        let _ = chat_protocol::ids::is_valid_user_id(&req.user);
    }
    // v1.1: a read marker's seq is an integer in 0..=i64::MAX, or refused.
    if let Ok(req) = serde_json::from_slice::<ReadRequest>(data) {
        assert!(req.seq <= i64::MAX as u64);
        serde_json::to_string(&req).unwrap();
    }
});
