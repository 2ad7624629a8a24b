//! `weir describe FILE [--format text|dot|mermaid|json]`: the sub-topologies, split at topics.

use std::path::Path;

use weir_topology::describe::{describe, to_dot, to_mermaid, to_text};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    Dot,
    Mermaid,
    Json,
}

pub fn run(path: &Path, format: Format) -> anyhow::Result<()> {
    let t = super::load(path)?;
    let d = describe(&t);
    let out = match format {
        Format::Text => to_text(&d),
        Format::Dot => to_dot(&d),
        Format::Mermaid => to_mermaid(&d),
        Format::Json => serde_json::to_string_pretty(&d)? + "\n",
    };
    print!("{out}");
    Ok(())
}
