//! The REST half of the contract: one `request` that adds the token, asks
//! the token provider again and retries once after a 401, and turns error
//! bodies into [`Error::Api`]; then one small method per endpoint,
//! arguments checked first. Bodies are `chat_protocol::rest` types.

use std::sync::Arc;
use std::time::Duration;

use chat_protocol::rest::{
    ConnectResponse, CreateRoomRequest, ErrorBody, Member, MemberList, MemberRead, Message,
    MessageList, PostMessageRequest, ReadList, ReadMarker, ReadRequest, Room, RoomList, ServerInfo,
    ServerList, TokenRequest, TokenResponse, TokenScope,
};
use rand::Rng;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::token::{TokenProvider, TokenSource};
use crate::{validate, Error};

/// Longest single REST request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of [`RestClient::publish`] before its error is returned.
pub const PUBLISH_ATTEMPTS: u32 = 5;

/// Which part of a room's history to read: `after` and `before` are
/// exclusive bounds; neither means the latest messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    pub after: Option<u64>,
    pub before: Option<u64>,
    /// 1..=200; the server's default (50) when `None`.
    pub limit: Option<u32>,
}

impl HistoryQuery {
    /// Messages with seq > `seq`, ascending.
    pub fn after(seq: u64) -> Self {
        HistoryQuery {
            after: Some(seq),
            ..Self::default()
        }
    }

    /// The messages just below seq `seq`, ascending.
    pub fn before(seq: u64) -> Self {
        HistoryQuery {
            before: Some(seq),
            ..Self::default()
        }
    }

    /// The latest messages, ascending.
    pub fn latest() -> Self {
        Self::default()
    }

    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// REST client of the API server. Cheap to clone (shares the connection
/// pool and the token cache).
#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base: Arc<str>,
    tokens: Option<TokenSource>,
}

impl std::fmt::Debug for RestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// How a [`RestClient`] talks HTTP.
#[derive(Debug, Clone)]
pub struct RestOptions {
    /// Longest single request (default 30 s).
    pub request_timeout: Duration,
    /// Idle keep-alive connections kept per host (default: no limit).
    /// Programs making many calls at once (a load generator's setup) bound
    /// it to the calls they keep in flight.
    pub pool_max_idle_per_host: usize,
}

impl Default for RestOptions {
    fn default() -> Self {
        RestOptions {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            pool_max_idle_per_host: usize::MAX,
        }
    }
}

/// A REST answer as it came: status and body bytes (see
/// [`RestClient::request_raw`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

fn http_client(options: &RestOptions) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(options.request_timeout)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(options.pool_max_idle_per_host)
        .tcp_nodelay(true)
        .build()
        // Building fails only when the TLS backend cannot initialise; this
        // crate enables none.
        .unwrap_or_else(|_| reqwest::Client::new())
}

impl RestClient {
    /// A client of the API server at `api_url` (e.g.
    /// `http://127.0.0.1:8080`) using `tokens`.
    pub fn new(api_url: &str, tokens: impl TokenProvider) -> Result<RestClient, Error> {
        Self::with_options(api_url, Arc::new(tokens), &RestOptions::default())
    }

    /// A client with `options`.
    pub fn with_options(
        api_url: &str,
        tokens: Arc<dyn TokenProvider>,
        options: &RestOptions,
    ) -> Result<RestClient, Error> {
        Ok(RestClient {
            http: http_client(options),
            base: check_api_url(api_url)?.into(),
            tokens: Some(TokenSource::new(tokens)),
        })
    }

    /// A client without a token: for [`RestClient::dev_token`], and as the
    /// shared connection pool that [`RestClient::with_tokens`] hands to many
    /// users.
    pub fn anonymous(api_url: &str, options: &RestOptions) -> Result<RestClient, Error> {
        Ok(RestClient {
            http: http_client(options),
            base: check_api_url(api_url)?.into(),
            tokens: None,
        })
    }

    /// The same API server and connection pool, as another caller. Cheap:
    /// programs acting as many users (a load generator, a test harness)
    /// share one pool.
    pub fn with_tokens(&self, tokens: impl TokenProvider) -> RestClient {
        RestClient {
            http: self.http.clone(),
            base: self.base.clone(),
            tokens: Some(TokenSource::new(Arc::new(tokens))),
        }
    }

    /// The same caller and pool, against another API server (a second
    /// replica, say).
    pub fn with_api_url(&self, api_url: &str) -> Result<RestClient, Error> {
        Ok(RestClient {
            http: self.http.clone(),
            base: check_api_url(api_url)?.into(),
            tokens: self.tokens.clone(),
        })
    }

    /// The API server's base URL, without a trailing slash.
    pub fn api_url(&self) -> &str {
        &self.base
    }

    /// One request: JSON body in, JSON (or nothing, for 204) out. Adds the
    /// token; after a 401 asks the provider for a new one and tries once
    /// more.
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Option<T>, Error> {
        let url = format!("{}{}", self.base, path);
        for attempt in 0.. {
            let mut req = self.http.request(method.clone(), &url);
            let mut token = None;
            if let Some(tokens) = &self.tokens {
                let t = tokens.get().await?;
                req = req.bearer_auth(&t);
                token = Some(t);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| Error::network(format!("{method} {url}"), &e))?;
            let status = resp.status().as_u16();
            if status == 401 && attempt == 0 {
                if let (Some(tokens), Some(t)) = (&self.tokens, &token) {
                    // Expired or revoked: ask the provider again, once.
                    tokens.invalidate(t).await;
                    continue;
                }
            }
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| Error::network(format!("{method} {url}: reading the answer"), &e))?;
            if !(200..300).contains(&status) {
                return Err(api_error(&method, path, status, &bytes));
            }
            if status == 204 || bytes.is_empty() {
                return Ok(None);
            }
            return serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::protocol(
                    format!("{method} {path}"),
                    format!(
                        "the answer is not the contract's ({e}): {}",
                        snippet(&String::from_utf8_lossy(&bytes))
                    ),
                )
            });
        }
        unreachable!("the loop returns")
    }

    /// Exactly one request, answered as it came: any status, the body as
    /// bytes. The token is added (when this client has one) but a 401 is
    /// not retried, and nothing is checked. For tools that examine the
    /// answers themselves (conformance tests); applications use the typed
    /// calls. `body` is the body's bytes and content type.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<RawAnswer, Error> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(tokens) = &self.tokens {
            req = req.bearer_auth(tokens.get().await?);
        }
        if let Some((bytes, content_type)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::network(format!("{method} {url}"), &e))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::network(format!("{method} {url}: reading the answer"), &e))?;
        Ok(RawAnswer {
            status,
            body: body.to_vec(),
        })
    }

    /// `POST /v1/auth/token`: a development token (only where the API
    /// server has development tokens on, as in the local mode). Sent without
    /// this client's token.
    pub async fn dev_token(&self, user: &str, scope: TokenScope) -> Result<TokenResponse, Error> {
        validate::user_id(user, "user")?;
        let anonymous = RestClient {
            http: self.http.clone(),
            base: self.base.clone(),
            tokens: None,
        };
        let body = TokenRequest {
            user: user.to_owned(),
            scope: (scope == TokenScope::Service).then_some(TokenScope::Service),
        };
        anonymous
            .call(Method::POST, "/v1/auth/token", Some(&body))
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, Error> {
        self.request(method.clone(), path, body)
            .await?
            .ok_or_else(|| Error::protocol(format!("{method} {path}"), "empty answer"))
    }

    async fn call_empty(&self, method: Method, path: &str) -> Result<(), Error> {
        self.request::<serde_json::Value>(method, path, None::<&()>)
            .await
            .map(|_| ())
    }

    // --- rooms ---------------------------------------------------------------

    /// `GET /v1/rooms`: the caller's rooms, with read state.
    pub async fn rooms(&self) -> Result<Vec<Room>, Error> {
        let list: RoomList = self.call(Method::GET, "/v1/rooms", None::<&()>).await?;
        Ok(list.rooms)
    }

    /// `GET /v1/rooms/{room}`.
    pub async fn room(&self, room: &str) -> Result<Room, Error> {
        let path = format!("/v1/rooms/{}", enc(validate::room_id(room)?));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /v1/rooms`. A user becomes a member; a service (v1.1) does not
    /// and may set `created_by`.
    pub async fn create_room(&self, request: &CreateRoomRequest) -> Result<Room, Error> {
        validate::room_name(&request.name)?;
        for m in request.members.iter().flatten() {
            validate::user_id(m, "members")?;
        }
        if let Some(c) = &request.created_by {
            validate::user_id(c, "created_by")?;
        }
        self.call(Method::POST, "/v1/rooms", Some(request)).await
    }

    /// `GET /v1/users/{user}/rooms` (v1.1, services only): `user`'s rooms
    /// with `user`'s read state.
    pub async fn rooms_of_user(&self, user: &str) -> Result<Vec<Room>, Error> {
        let path = format!("/v1/users/{}/rooms", enc(validate::user_id(user, "user")?));
        let list: RoomList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.rooms)
    }

    // --- members -------------------------------------------------------------

    /// `GET /v1/rooms/{room}/members`.
    pub async fn members(&self, room: &str) -> Result<Vec<Member>, Error> {
        let path = format!("/v1/rooms/{}/members", enc(validate::room_id(room)?));
        let list: MemberList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.members)
    }

    /// `PUT /v1/rooms/{room}/members/{user}` (idempotent).
    pub async fn add_member(&self, room: &str, user: &str) -> Result<(), Error> {
        let path = format!(
            "/v1/rooms/{}/members/{}",
            enc(validate::room_id(room)?),
            enc(validate::user_id(user, "user")?)
        );
        self.call_empty(Method::PUT, &path).await
    }

    /// `DELETE /v1/rooms/{room}/members/{user}`.
    pub async fn remove_member(&self, room: &str, user: &str) -> Result<(), Error> {
        let path = format!(
            "/v1/rooms/{}/members/{}",
            enc(validate::room_id(room)?),
            enc(validate::user_id(user, "user")?)
        );
        self.call_empty(Method::DELETE, &path).await
    }

    // --- messages ------------------------------------------------------------

    /// `POST /v1/rooms/{room}/messages`, once. See [`Self::publish`] for
    /// the retrying form.
    pub async fn post_message(
        &self,
        room: &str,
        request: &PostMessageRequest,
    ) -> Result<Message, Error> {
        validate::body(&request.body)?;
        if let Some(id) = &request.client_msg_id {
            validate::client_msg_id(id)?;
        }
        if let Some(from) = &request.from {
            validate::user_id(from, "from")?;
        }
        let path = format!("/v1/rooms/{}/messages", enc(validate::room_id(room)?));
        self.call(Method::POST, &path, Some(request)).await
    }

    /// Posts `body` over REST with one `client_msg_id` (generated when
    /// `None`), retried with that same id on network errors, 429 and 5xx
    /// until stored (at most [`PUBLISH_ATTEMPTS`] attempts), so the message
    /// is stored once. `from` (v1.1): services publish as that member.
    pub async fn publish(
        &self,
        room: &str,
        body: &str,
        from: Option<&str>,
        client_msg_id: Option<String>,
    ) -> Result<Message, Error> {
        let request = PostMessageRequest {
            body: body.to_owned(),
            client_msg_id: Some(client_msg_id.unwrap_or_else(new_client_msg_id)),
            from: from.map(str::to_owned),
        };
        let mut attempt = 1;
        loop {
            match self.post_message(room, &request).await {
                Err(e) if e.is_retryable() && attempt < PUBLISH_ATTEMPTS => {
                    let ceiling = 250u64 << attempt.min(6);
                    let delay = 50 + rand::rng().random_range(0..ceiling);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// `GET /v1/rooms/{room}/messages`: a page of history, ascending.
    pub async fn history(&self, room: &str, query: HistoryQuery) -> Result<Vec<Message>, Error> {
        let mut path = format!("/v1/rooms/{}/messages", enc(validate::room_id(room)?));
        let mut sep = '?';
        for (name, value) in [
            ("after", query.after),
            ("before", query.before),
            ("limit", query.limit.map(u64::from)),
        ] {
            if let Some(v) = value {
                if name == "limit" {
                    validate::limit(v as u32)?;
                } else {
                    validate::seq(v, if name == "after" { "after" } else { "before" })?;
                }
                path.push(sep);
                path.push_str(&format!("{name}={v}"));
                sep = '&';
            }
        }
        let list: MessageList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.messages)
    }

    // --- read state (v1.1) -----------------------------------------------------

    /// `PUT /v1/rooms/{room}/read`: moves the caller's read marker (forward
    /// only; above the latest seq it stops there).
    pub async fn mark_read(&self, room: &str, seq: u64) -> Result<ReadMarker, Error> {
        let path = format!("/v1/rooms/{}/read", enc(validate::room_id(room)?));
        let body = ReadRequest {
            seq: validate::seq(seq, "seq")?,
        };
        self.call(Method::PUT, &path, Some(&body)).await
    }

    /// `GET /v1/rooms/{room}/reads`: every member's read marker.
    pub async fn reads(&self, room: &str) -> Result<Vec<MemberRead>, Error> {
        let path = format!("/v1/rooms/{}/reads", enc(validate::room_id(room)?));
        let list: ReadList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.reads)
    }

    // --- connection ------------------------------------------------------------

    /// `POST /v1/connect`: which chat server to use now, and a single-use
    /// ticket for it.
    pub async fn connect_ticket(&self) -> Result<ConnectResponse, Error> {
        self.call(Method::POST, "/v1/connect", None::<&()>).await
    }

    /// `GET /v1/servers`: the live chat servers.
    pub async fn servers(&self) -> Result<Vec<ServerInfo>, Error> {
        let list: ServerList = self.call(Method::GET, "/v1/servers", None::<&()>).await?;
        Ok(list.servers)
    }
}

/// `POST /v1/auth/token`: a development token (only where the API server
/// has development tokens on, as in the local mode).
pub async fn dev_token(
    api_url: &str,
    user: &str,
    scope: TokenScope,
) -> Result<TokenResponse, Error> {
    RestClient::anonymous(api_url, &RestOptions::default())?
        .dev_token(user, scope)
        .await
}

fn check_api_url(api_url: &str) -> Result<&str, Error> {
    let base = api_url.trim_end_matches('/');
    let rest = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() => Ok(base),
        _ => Err(Error::invalid(
            "api url",
            format!("{api_url:?} is not an http:// or https:// URL"),
        )),
    }
}

fn api_error(method: &Method, path: &str, status: u16, bytes: &[u8]) -> Error {
    let (code, message) = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => {
            // Read the body leniently: a code outside chat_protocol's enum
            // (a newer server) still says what happened.
            match serde_json::from_value::<ErrorBody>(v.clone()) {
                Ok(b) => (b.error.code.as_str().to_owned(), b.error.message),
                Err(_) => match (
                    v.pointer("/error/code").and_then(|c| c.as_str()),
                    v.pointer("/error/message").and_then(|c| c.as_str()),
                ) {
                    (Some(c), m) => (c.to_owned(), m.unwrap_or("").to_owned()),
                    _ => (code_of_status(status).into(), format!("HTTP {status}")),
                },
            }
        }
        Err(_) => (
            code_of_status(status).into(),
            match snippet(&String::from_utf8_lossy(bytes)) {
                s if s.is_empty() => format!("HTTP {status}"),
                s => s,
            },
        ),
    };
    Error::Api {
        method: method.to_string(),
        path: path.to_owned(),
        status,
        code,
        message,
    }
}

fn code_of_status(status: u16) -> &'static str {
    match status {
        400 => "invalid_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        413 => "payload_too_large",
        429 => "rate_limited",
        s if s >= 500 => "unavailable",
        _ => "invalid_request",
    }
}

/// The first line of `text`, cut to 120 characters (for error messages,
/// which stay on one line).
pub(crate) fn snippet(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or("");
    let mut out: String = line.chars().take(120).collect();
    if line.chars().count() > 120 || text.trim().lines().nth(1).is_some() {
        out.push_str("...");
    }
    out
}

/// Percent-encodes a path segment (everything outside the unreserved set).
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// 128 random bits: unique without coordination, stable across retries.
pub fn new_client_msg_id() -> String {
    let bits: u128 = rand::rng().random();
    format!("c_{bits:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_api_errors_with_the_contract_code() {
        let e = api_error(
            &Method::GET,
            "/v1/rooms/x",
            404,
            br#"{"error":{"code":"not_found","message":"no such room"}}"#,
        );
        assert_eq!(e.kind(), crate::ErrorKind::NotFound);
        assert!(e.to_string().contains("no such room"));
        let e = api_error(&Method::GET, "/x", 502, b"<html>\n<body>bad gateway</body>");
        assert_eq!(e.kind(), crate::ErrorKind::Unavailable);
        assert!(!e.to_string().contains('\n'), "one line: {e}");
        let e = api_error(
            &Method::GET,
            "/x",
            418,
            br#"{"error":{"code":"teapot","message":"short and stout"}}"#,
        );
        assert!(e.to_string().contains("teapot"));
    }

    #[test]
    fn api_urls_must_be_http() {
        assert!(check_api_url("http://127.0.0.1:8080/").is_ok());
        assert!(check_api_url("127.0.0.1:8080").is_err());
        assert!(check_api_url("http://").is_err());
    }

    #[test]
    fn client_msg_ids_are_distinct_and_valid() {
        let a = new_client_msg_id();
        assert_ne!(a, new_client_msg_id());
        assert!(validate::client_msg_id(&a).is_ok());
    }
}
