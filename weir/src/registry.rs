//! Every component type the `weir` binary knows: the one place that names them all.

use weir_topology::component::{parse_config, ComponentType, Registry};
use weir_topology::source::KafkaSourceConfig;
use weir_topology::NodeKind;

pub fn registry() -> Registry {
    let mut r = Registry::new().register(ComponentType {
        name: "kafka",
        kind: NodeKind::Source,
        parse: parse_config::<KafkaSourceConfig>,
    });
    for c in weir_processors::components()
        .into_iter()
        .chain(weir_sinks::components())
    {
        r = r.register(c);
    }
    r
}
