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
    config.check().map_err(anyhow::Error::msg)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    /// The documented example must stay a valid configuration.
    #[test]
    fn example_configuration_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../missive.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config: missive_server::Config = toml::from_str(&text).expect("missive.example.toml parses");
        assert_eq!(config.server_name, "localhost");
        assert!(config.rate_limits.enabled);
    }
}
