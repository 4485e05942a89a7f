//! Policy state kept across reloads.
//!
//! A reload builds every stack anew, but a breaker that is open, a limiter that spent
//! its burst, a retry budget that is drained or a cap with calls in flight must not
//! start afresh because an unrelated line of the file changed. Each stateful layer a
//! build makes is kept here under what it is (its service, its kind, its policy name)
//! with what defined it; the next build takes the kept layer back when the definition
//! is the same, and makes a new one (fresh state) when it changed or is new.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

/// What a stateful layer is: the service it serves, its kind and its policy's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CarryKey {
    service: Arc<str>,
    kind: &'static str,
    policy: String,
}

impl CarryKey {
    /// The `kind` layer (`breaker`, `retry`, ...) of `service` built from `policy`.
    pub fn new(service: &Arc<str>, kind: &'static str, policy: &str) -> Self {
        Self {
            service: service.clone(),
            kind,
            policy: policy.to_string(),
        }
    }
}

/// A kept layer and the definition it was built from.
struct Kept {
    definition: String,
    layer: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("definition", &self.definition)
            .finish_non_exhaustive()
    }
}

/// The stateful layers of one built config.
#[derive(Debug, Default)]
pub struct PolicyCarry {
    kept: HashMap<CarryKey, Kept>,
}

impl PolicyCarry {
    /// The layer kept under `key` when it was built from the same `definition`.
    /// Layers share their state through `Clone`, so the clone is the same layer.
    pub fn reuse<T: Clone + 'static>(&self, key: &CarryKey, definition: &str) -> Option<T> {
        let kept = self.kept.get(key)?;
        if kept.definition != definition {
            return None;
        }
        kept.layer.downcast_ref::<T>().cloned()
    }

    /// Keeps `layer`, built from `definition`, for the next build.
    pub fn keep<T: Clone + Send + Sync + 'static>(
        &mut self,
        key: CarryKey,
        definition: String,
        layer: &T,
    ) {
        let layer = Box::new(layer.clone());
        self.kept.insert(key, Kept { definition, layer });
    }

    /// How many layers are kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

/// The layer `key` of `previous` when built from `definition`, else `build()`'s; either
/// way kept in `next`.
pub fn carried<T, E>(
    previous: Option<&PolicyCarry>,
    next: &mut PolicyCarry,
    key: CarryKey,
    definition: String,
    build: impl FnOnce() -> Result<T, E>,
) -> Result<T, E>
where
    T: Clone + Send + Sync + 'static,
{
    let layer = match previous.and_then(|p| p.reuse::<T>(&key, &definition)) {
        Some(layer) => layer,
        None => build()?,
    };
    next.keep(key, definition, &layer);
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_taken_back_only_for_the_same_definition() {
        let service: Arc<str> = Arc::from("orders");
        let key = CarryKey::new(&service, "breaker", "strict");
        let mut first = PolicyCarry::default();
        let state = Arc::new(std::sync::atomic::AtomicU32::new(7));
        let built: Result<_, ()> = carried(None, &mut first, key.clone(), "a".into(), || {
            Ok(state.clone())
        });
        assert!(Arc::ptr_eq(&built.unwrap(), &state));

        let mut second = PolicyCarry::default();
        let kept: Result<Arc<std::sync::atomic::AtomicU32>, ()> =
            carried(Some(&first), &mut second, key.clone(), "a".into(), || {
                panic!("the kept layer serves")
            });
        assert!(Arc::ptr_eq(&kept.unwrap(), &state));
        assert_eq!(second.len(), 1);

        let mut third = PolicyCarry::default();
        let fresh: Result<Arc<std::sync::atomic::AtomicU32>, ()> =
            carried(Some(&second), &mut third, key, "b".into(), || {
                Ok(Arc::new(std::sync::atomic::AtomicU32::new(0)))
            });
        assert!(
            !Arc::ptr_eq(&fresh.unwrap(), &state),
            "a new definition, a new layer"
        );
    }
}
