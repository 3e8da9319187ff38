//! `chat`: the chat service from a terminal. See `clients/cli/README.md`.
//!
//! Everything that talks to the service is `chat-client`; this binary only
//! parses arguments, prints, and maps failures to one line on stderr and an
//! exit code (see [`failure`]).

mod cli;
mod commands;
mod config;
mod failure;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not failures; every usage error is 1.
            let code = if e.use_stderr() { failure::USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat: error: starting the runtime: {e}");
            return ExitCode::from(failure::USAGE);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("chat: error: {}", failure::one_line(&f.message));
            ExitCode::from(f.code)
        }
    }
}
