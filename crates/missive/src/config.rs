//! Loading the configuration: defaults, then the TOML file, then `MISSIVE_*`.

use std::path::Path;

use anyhow::Context;
use missive_server::Config;

pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    let mut config = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => Config::default(),
    };
    config
        .apply_env(|k| std::env::var(k).ok())
        .map_err(anyhow::Error::msg)?;
    Ok(config)
}
