//! `weir diff OLD NEW [--format text|json]`: what an edit of a topology file changes, node by
//! node, and whether a running `weir run --watch` applies it live (at the next transaction
//! boundary) or restarts which sub-topologies. Exit 0 either way; 78 when a file does not
//! load (each problem at its file:line:column, as `weir check`).

use std::path::Path;

use weir_topology::diff::diff;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn run(old: &Path, new: &Path, format: Format) -> anyhow::Result<()> {
    let (a, b) = (super::load(old)?, super::load(new)?);
    let d = diff(&a, &b);
    match format {
        Format::Text => print!("{d}"),
        Format::Json => println!("{}", serde_json::to_string_pretty(&d)?),
    }
    Ok(())
}
