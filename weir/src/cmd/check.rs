//! `weir check FILE`: every problem of a topology file at once, each at file:line:column;
//! exit 78 on a config error, 0 when valid.

use std::path::Path;

pub fn run(path: &Path) -> anyhow::Result<()> {
    let t = super::load(path)?;
    let subs = weir_topology::graph::sub_topologies(&t);
    println!(
        "{}: ok ({} nodes in {} sub-topolog{}, {} tests)",
        path.display(),
        t.nodes.len(),
        subs.len(),
        if subs.len() == 1 { "y" } else { "ies" },
        t.tests.len()
    );
    Ok(())
}
