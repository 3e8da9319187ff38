//! The WebSocket frame parser on arbitrary input: it must never panic, and
//! whatever it accepts must satisfy the limits it enforces.
#![no_main]

use chat_protocol::{ClientFrame, ErrorCode, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let limits = Limits::default();
    match ClientFrame::parse(text, &limits) {
        Ok(ClientFrame::Send { body, client_msg_id, .. }) => {
            assert!(limits.check_message(&body, client_msg_id.as_deref()).is_ok());
        }
        Ok(ClientFrame::Resume { rooms }) => assert!(rooms.len() <= limits.max_resume_rooms),
        Ok(_) => {}
        Err(e) => assert!(matches!(e.code, ErrorCode::InvalidFrame | ErrorCode::InvalidRequest)),
    }
});
