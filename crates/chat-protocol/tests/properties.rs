//! Property-based tests of the wire format: any message survives a round
//! trip through its frame, and no input string makes the parser panic.

use chat_protocol::{ClientFrame, ErrorCode, Limits, Message, ServerFrame};
use proptest::prelude::*;

fn message() -> impl Strategy<Value = Message> {
    (
        "[A-Za-z0-9_-]{1,40}",
        1u64..u64::MAX / 2,
        "[a-z0-9_]{1,40}",
        "[A-Za-z0-9_.-]{1,64}",
        any::<String>(),
        any::<u64>(),
        proptest::option::of(any::<String>()),
    )
        .prop_map(|(room, seq, id, from, body, ts, client_msg_id)| Message {
            room,
            seq,
            id,
            from,
            body,
            ts,
            client_msg_id,
        })
}

proptest! {
    #[test]
    fn message_frames_round_trip(m in message()) {
        let json = ServerFrame::Message(m.clone()).to_json();
        prop_assert!(!json.contains('\n'), "frames are single lines (the link batching relies on it)");
        let back: ServerFrame = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, ServerFrame::Message(m));
    }

    #[test]
    fn the_parser_never_panics(text in any::<String>()) {
        let _ = ClientFrame::parse(&text, &Limits::default());
    }

    #[test]
    fn json_shaped_garbage_is_refused_cleanly(value in json_value()) {
        let text = value.to_string();
        if let Err(e) = ClientFrame::parse(&text, &Limits::default()) {
            prop_assert!(matches!(e.code, ErrorCode::InvalidFrame | ErrorCode::InvalidRequest));
        }
    }

    #[test]
    fn send_frames_parse_to_what_was_sent(
        room in any::<String>(),
        body in any::<String>(),
        cmid in proptest::option::of(any::<String>()),
    ) {
        let frame = serde_json::json!({"type": "send", "room": room, "body": body, "client_msg_id": cmid});
        let limits = Limits::default();
        match ClientFrame::parse(&frame.to_string(), &limits) {
            Ok(ClientFrame::Send { room: r, body: b, client_msg_id: c }) => {
                prop_assert_eq!(r, room);
                prop_assert_eq!(b, body);
                prop_assert_eq!(c, cmid);
            }
            Ok(other) => prop_assert!(false, "parsed as {:?}", other),
            Err(e) => {
                prop_assert_eq!(e.code, ErrorCode::InvalidRequest);
                prop_assert!(limits.check_message(&body, cmid.as_deref()).is_err());
                prop_assert_eq!(e.client_msg_id, cmid);
            }
        }
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        prop_oneof![
            Just("send"),
            Just("resume"),
            Just("typing"),
            Just("ping"),
            Just("x")
        ]
        .prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("room".to_owned()),
                    Just("body".to_owned()),
                    Just("rooms".to_owned()),
                    Just("nonce".to_owned()),
                    any::<String>()
                ],
                inner,
                0..5,
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
