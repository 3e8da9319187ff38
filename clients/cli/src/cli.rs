//! The command line: clap definitions only.

use clap::{Args, Parser, Subcommand};

/// The chat service from a terminal.
///
/// Exit codes: 0 ok, 1 bad usage or input, 2 not found or forbidden,
/// 3 not logged in or token refused/expired, 4 service unreachable or
/// unavailable, 5 the server answered outside the contract.
#[derive(Debug, Parser)]
#[command(
    name = "chat",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 ok, 1 bad usage or input, 2 not found or forbidden, \
3 not logged in or token refused/expired, 4 service unreachable or unavailable, \
5 the server answered outside the contract."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The API server [default: the one of the last `chat login`, else
    /// http://127.0.0.1:8080]
    #[arg(long, env = "CHAT_API", global = true)]
    pub api: Option<String>,
    /// A token to use instead of the one `chat login` stored
    #[arg(long, env = "CHAT_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Machine-readable output: one JSON value per line
    #[arg(long, global = true)]
    pub json: bool,
    /// Report connection changes and retried failures on stderr
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Get a development token for USER and keep it (local mode)
    Login {
        user: String,
        /// A service token (v1.1) instead of a user token
        #[arg(long)]
        service: bool,
    },
    /// Forget the stored token of the API server
    Logout,
    /// The rooms you belong to, with unread counts
    Rooms {
        /// Services only: the rooms of this user
        #[arg(long)]
        of: Option<String>,
    },
    /// Create rooms
    Room {
        #[command(subcommand)]
        command: RoomCommand,
    },
    /// The members of a room, and who is online
    Members { room: String },
    /// Send TEXT to a room, or one message per line of standard input
    Send {
        room: String,
        /// The message; without it, each line of standard input is one
        text: Option<String>,
        /// Services only (v1.1): send as this member
        #[arg(long)]
        from: Option<String>,
    },
    /// Follow rooms live: prints `seq from: body`; survives reconnects
    /// without gaps or duplicates; Ctrl-C stops
    Tail {
        #[arg(required = true)]
        rooms: Vec<String>,
        /// Start after this seq (replays what follows) instead of now
        #[arg(long)]
        after: Option<u64>,
        /// Stop after this many messages
        #[arg(long)]
        count: Option<u64>,
    },
    /// Read a room's history (ascending); the latest messages by default
    History {
        room: String,
        /// Messages with seq > N
        #[arg(long, value_name = "N", conflicts_with = "before")]
        after: Option<u64>,
        /// Messages just below seq N
        #[arg(long, value_name = "N")]
        before: Option<u64>,
        /// At most L messages (1..200; the server's default is 50)
        #[arg(long, value_name = "L", value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: Option<u32>,
    },
    /// Mark a room read up to SEQ (default: its latest message)
    Read { room: String, seq: Option<u64> },
    /// Every member's read marker in a room
    Reads { room: String },
    /// The live chat servers
    Servers,
    /// Print a shell completion script
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum RoomCommand {
    /// Create a room (you become a member)
    Create {
        name: String,
        /// Other members, comma-separated
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
        /// Services only (v1.1): the user recorded as creator
        #[arg(long)]
        created_by: Option<String>,
    },
    /// Show one room
    Show { room: String },
    /// Add a member
    Add { room: String, user: String },
    /// Remove a member (yourself, or anyone if you created the room)
    Remove { room: String, user: String },
}
