//! What a compiled component is: a filter (of either interface version) or a transform.
//!
//! Kept apart from [`super::runtime`] (which compiles and links, knowing nothing of the
//! versions' differences) and [`super::filter_abi`] (which calls filters of both versions),
//! so that neither needs the other.

use anyhow::anyhow;

use super::filter_abi::FilterPre;
use super::runtime::{FILTER_INTERFACES, INTERFACE, PluginState, Runtime, TransformPluginPre};

/// A compiled, linked plugin of either kind.
pub enum Prepared {
    Filter(FilterPre),
    Transform(TransformPluginPre<PluginState>),
}

/// Compile (or load from the cache) and link a component of either world; fails with a
/// readable reason when the bytes are not a component or implement neither world.
pub fn prepare_any(runtime: &Runtime, bytes: &[u8]) -> anyhow::Result<Prepared> {
    let pre = runtime.link(bytes)?;
    match FilterPre::new(pre.clone()) {
        Ok(filter) => Ok(Prepared::Filter(filter)),
        Err(not_filter) => match TransformPluginPre::new(pre) {
            Ok(transform) => Ok(Prepared::Transform(transform)),
            Err(_) => Err(anyhow!(
                "does not implement world `filter-plugin` of {} (nor `transform-plugin` of {INTERFACE}): {not_filter}",
                FILTER_INTERFACES.join(" or ")
            )),
        },
    }
}

/// [`prepare_any`], for a filter only.
pub fn prepare(runtime: &Runtime, bytes: &[u8]) -> anyhow::Result<FilterPre> {
    match prepare_any(runtime, bytes)? {
        Prepared::Filter(filter) => Ok(filter),
        Prepared::Transform(_) => Err(anyhow!("is a transform plugin, not a filter")),
    }
}
