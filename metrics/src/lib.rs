//! tailcache-metrics: how each program declares its Prometheus metrics, and the label sets
//! more than one program counts by. A program's metrics struct is built in one expression,
//! each field made by [`Prefixed::add`], which registers it under the program's prefix with
//! its help text: no metric is kept but not exported, and each name and help stands beside
//! the field it fills.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::{Metric, Registry};

/// Labels of a family counted by outcome (`ok`/`failed`, `hit`/`miss`, a build's result).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Labels of a family kept per compression, by its name in narinfos (`none`, `xz`, `zstd`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompressionLabels {
    pub compression: &'static str,
}

/// A registry seen through one prefix: what is added as `name` is exported as
/// `<prefix>_<name>`.
#[derive(Debug)]
pub struct Prefixed<'a> {
    registry: &'a mut Registry,
}

impl<'a> Prefixed<'a> {
    /// Metrics added through the result are named `<prefix>_<name>`.
    pub fn new(registry: &'a mut Registry, prefix: &str) -> Self {
        Prefixed {
            registry: registry.sub_registry_with_prefix(prefix),
        }
    }

    /// Registers `metric` as `name` with its `help` text, and returns it. A metric is a shared
    /// handle: what the returned value records is what the registry exports.
    pub fn add<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.registry.register(name, help, metric.clone());
        metric
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn what_the_returned_metric_counts_is_exported_under_the_prefix() {
        let mut registry = Registry::default();
        let counter: Counter = Prefixed::new(&mut registry, "tailcache_test").add(
            "things",
            "things counted",
            Counter::default(),
        );
        counter.inc_by(3);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("# HELP tailcache_test_things things counted.\n"),
            "{text}"
        );
        assert!(text.contains("\ntailcache_test_things_total 3\n"), "{text}");
    }
}
