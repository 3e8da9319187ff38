//! Argument checks done before anything is sent. A bad argument is the
//! application's bug: it fails at once with [`Error::InvalidArgument`]
//! instead of as a server error later. The limits are the contract's, from
//! `chat_protocol::Limits`.

use chat_protocol::ids::is_valid_user_id;
use chat_protocol::Limits;

use crate::Error;

pub(crate) fn user_id<'a>(user: &'a str, argument: &'static str) -> Result<&'a str, Error> {
    if is_valid_user_id(user) {
        Ok(user)
    } else {
        Err(Error::invalid(
            argument,
            format!("{user:?} must be 1-64 characters of [A-Za-z0-9_.-]"),
        ))
    }
}

pub(crate) fn room_id(room: &str) -> Result<&str, Error> {
    if room.is_empty() {
        Err(Error::invalid("room", "must be a non-empty room id"))
    } else {
        Ok(room)
    }
}

pub(crate) fn body(body: &str) -> Result<&str, Error> {
    Limits::default()
        .check_message(body, None)
        .map_err(|reason| Error::invalid("body", reason))?;
    Ok(body)
}

pub(crate) fn client_msg_id(id: &str) -> Result<&str, Error> {
    Limits::default()
        .check_message("x", Some(id))
        .map_err(|reason| Error::invalid("client_msg_id", reason))?;
    Ok(id)
}

pub(crate) fn room_name(name: &str) -> Result<&str, Error> {
    Limits::default()
        .check_room_name(name)
        .map_err(|reason| Error::invalid("name", reason))?;
    Ok(name)
}

pub(crate) fn seq(seq: u64, argument: &'static str) -> Result<u64, Error> {
    if seq > i64::MAX as u64 {
        Err(Error::invalid(argument, "must be at most 2^63-1"))
    } else {
        Ok(seq)
    }
}

pub(crate) fn limit(limit: u32) -> Result<u32, Error> {
    let max = Limits::default().max_history_limit;
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(Error::invalid("limit", format!("must be in 1..={max}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_limits_are_checked() {
        assert!(user_id("alice", "user").is_ok());
        assert!(user_id("al ice", "user").is_err());
        assert!(room_id("").is_err());
        assert!(body("").is_err());
        assert!(body(&"a".repeat(4097)).is_err());
        assert!(body(&"a".repeat(4096)).is_ok());
        assert!(client_msg_id("").is_err());
        assert!(room_name(&"n".repeat(101)).is_err());
        assert!(limit(0).is_err());
        assert!(limit(201).is_err());
        assert!(limit(200).is_ok());
        assert!(seq(u64::MAX, "seq").is_err());
    }
}
