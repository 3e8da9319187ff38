//! Running the real `chat` binary: each [`Home`] is a user with its own
//! config directory (`XDG_CONFIG_HOME`), so tests never touch the real one
//! and users never share tokens. A [`Tail`] is a `chat tail` process whose
//! stdout and stderr lines arrive on channels.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn chat_bin() -> &'static str {
    env!("CARGO_BIN_EXE_chat")
}

/// A user of the CLI: a config directory and an API URL.
pub struct Home {
    pub dir: PathBuf,
    pub api: String,
}

impl Home {
    pub fn new(api: &str) -> Home {
        let dir = std::env::temp_dir().join(e2e::unique("chat-cli-home"));
        std::fs::create_dir_all(&dir).unwrap();
        Home {
            dir,
            api: api.to_owned(),
        }
    }

    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(chat_bin());
        cmd.args(args)
            .env("XDG_CONFIG_HOME", &self.dir)
            .env("CHAT_API", &self.api)
            .env_remove("CHAT_TOKEN")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `chat args...` to the end.
    pub async fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None).await
    }

    pub async fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("starting chat");
        if let Some(text) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).await.unwrap();
            drop(pipe);
        }
        tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("chat {args:?} did not finish within {WAIT:?}"))
            .unwrap()
    }

    /// Runs `chat args...`, which must succeed; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "chat {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Asserts a failure: exit code `code`, exactly one line on stderr
/// starting with `chat: error:`, nothing that looks like a panic.
#[track_caller]
pub fn assert_fails(out: &Output, code: i32, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit code; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr, got {stderr:?}");
    assert!(lines[0].starts_with("chat: error: "), "{what}: {stderr:?}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{what}: {stderr:?}"
    );
    lines[0].to_owned()
}

/// A running `chat tail`.
pub struct Tail {
    pub child: tokio::process::Child,
    pub stdout: mpsc::UnboundedReceiver<String>,
    pub stderr: mpsc::UnboundedReceiver<String>,
}

impl Tail {
    pub fn start(home: &Home, args: &[&str]) -> Tail {
        let mut cmd = home.command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting chat tail");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Tail {
            child,
            stdout,
            stderr,
        }
    }

    /// The next stderr line containing `needle`.
    pub async fn stderr_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stderr.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("chat tail ended before printing {needle:?}"),
                Err(_) => panic!("chat tail printed no {needle:?} within {timeout:?}"),
            }
        }
    }

    /// The server id of the next "connected to <id>" line (needs `-v`).
    pub async fn connected_to(&mut self, timeout: Duration) -> String {
        let line = self.stderr_line("connected to ", timeout).await;
        line.split("connected to ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_owned()
    }

    /// The next `n` stdout lines.
    pub async fn stdout_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.stdout.recv()).await {
                Ok(Some(line)) => out.push(line),
                Ok(None) | Err(_) => panic!(
                    "chat tail printed {} of {n} lines within {timeout:?}: {out:#?}",
                    out.len()
                ),
            }
        }
        out
    }
}

fn lines(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The room id a `chat room create` printed.
pub fn room_id(stdout: &str) -> String {
    let id = stdout.trim().to_owned();
    assert!(id.starts_with("r_"), "not a room id: {stdout:?}");
    id
}
