//! Loading a topology file: parsed and each node checked ([`crate::config`]), then the graph
//! checked ([`crate::graph`]) — every problem at once, each at its `file:line:column`.

use std::path::Path;

use crate::component::Registry;
use crate::config::{parse, LoadError, Topology};

/// Reads and checks a topology file; environment variables come from the process.
pub fn load_file(path: &Path, registry: &Registry) -> Result<Topology, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_str(&path.display().to_string(), &text, registry, &|k| {
        std::env::var(k).ok()
    })
}

/// Parses and checks a topology from text. `env` resolves `${VAR}` references.
pub fn load_str(
    file: &str,
    text: &str,
    registry: &Registry,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Topology, LoadError> {
    let (topology, mut diags) = parse(file, text, registry, env)?;
    diags.extend(crate::graph::check(&topology));
    if diags.is_empty() {
        Ok(topology)
    } else {
        diags.sort_by_key(|d| (d.line, d.column));
        diags.dedup();
        Err(LoadError::Invalid(diags))
    }
}
