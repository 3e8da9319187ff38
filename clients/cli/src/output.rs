//! Output: JSON lines for scripts, text for people, and a spinner on
//! stderr only when stdout and stderr are terminals (so pipes and scripts
//! never see control characters).

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde::Serialize;

pub struct Output {
    pub json: bool,
    pub verbose: bool,
    spinner: bool,
}

impl Output {
    pub fn new(json: bool, verbose: bool) -> Output {
        Output {
            json,
            verbose,
            spinner: !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
        }
    }

    /// One JSON value on one line of stdout.
    pub fn json_line(&self, value: &impl Serialize) {
        let text = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
        self.line(&text);
    }

    /// One line of stdout; a closed pipe (`chat tail | head`) ends quietly.
    pub fn line(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            std::process::exit(0);
        }
    }

    /// A note on stderr, shown with `--verbose`.
    pub fn note(&self, text: &str) {
        if self.verbose {
            eprintln!("chat: {}", crate::failure::one_line(text));
        }
    }

    /// Runs `work`, with a spinner and `what` on stderr while it takes
    /// longer than a moment (terminals only).
    pub async fn waiting<T>(&self, what: &str, work: impl Future<Output = T>) -> T {
        if !self.spinner {
            return work.await;
        }
        let what = what.to_owned();
        let drawn = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = drawn.clone();
        let spin = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            let frames = ['|', '/', '-', '\\'];
            for i in 0.. {
                eprint!("\r{} {what}", frames[i % frames.len()]);
                let _ = std::io::stderr().flush();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let result = work.await;
        spin.abort();
        let _ = spin.await;
        if drawn.load(std::sync::atomic::Ordering::SeqCst) {
            // Clear the spinner's line.
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
        result
    }
}

/// Pads cells into aligned columns (no dependency for a table).
pub fn table(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, cell)| {
                    if i + 1 == r.len() {
                        cell.clone()
                    } else {
                        format!("{cell:<width$}", width = widths[i])
                    }
                })
                .collect();
            cells.join("  ")
        })
        .collect()
}
