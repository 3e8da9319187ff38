//! The config file: `<config dir>/chat/config.json` (on Linux
//! `$XDG_CONFIG_HOME/chat/config.json`, else `~/.config/chat/config.json`),
//! holding the token of each API server `chat login` was used with and the
//! API server of the last login. Written with mode 0600: it holds tokens.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::failure::Failure;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Config {
    /// The API server of the last `chat login`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// API server URL -> login.
    #[serde(default)]
    pub logins: BTreeMap<String, Login>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Login {
    pub user: String,
    pub token: String,
    pub expires_at: u64,
}

pub fn path() -> Result<PathBuf, Failure> {
    let dir = dirs::config_dir().ok_or_else(|| {
        Failure::usage("no config directory (set XDG_CONFIG_HOME or HOME)".to_string())
    })?;
    Ok(dir.join("chat").join("config.json"))
}

impl Config {
    /// The config file's content; empty when there is none.
    pub fn load() -> Result<Config, Failure> {
        let path = path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                Failure::usage(format!(
                    "{} is not a valid config file ({e}); delete it and log in again",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(Failure::usage(format!("reading {}: {e}", path.display()))),
        }
    }

    pub fn save(&self) -> Result<PathBuf, Failure> {
        let path = path()?;
        let fail = |e: std::io::Error| Failure::usage(format!("writing {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        let tmp = path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp).map_err(fail)?;
            file.write_all(text.as_bytes()).map_err(fail)?;
        }
        std::fs::rename(&tmp, &path).map_err(fail)?;
        Ok(path)
    }
}
