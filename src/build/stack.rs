//! A service's policy stacks, built from one config's policies.
//!
//! The layers are built once per service and shared by its routes (one breaker, one
//! concurrency cap, one limiter and one retry budget per policy name), so a route does
//! not split the service's state. Fallbacks come last: a fallback's alternate is
//! another service's stack without its own fallback, so every service's core stack must
//! exist first, and fallbacks never chain.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use tower::util::Either;
use tower::Layer;

use super::carry::{carried, CarryKey, PolicyCarry};
use super::resolve::{self, BuildError, NONE};
use crate::balance::EndpointSet;
use crate::config::{
    FieldPath, InboundSection, PoliciesSection, RouteSection, ServiceSection, UpstreamProtocol,
};
use crate::policy::circuit_breaker::{EndpointBreakers, ServiceBreakerLayer};
use crate::policy::concurrency::{ConcurrencyConfig, ConcurrencyLayer};
use crate::policy::fallback::FallbackLayer;
use crate::policy::fault::FaultLayer;
use crate::policy::rate_limit::RateLimitLayer;
use crate::policy::retry::RetryLayer;
use crate::policy::timeout::TimeoutLayer;
use crate::policy::{BreakerSource, CoreStack, PolicyMetrics, ServiceStack, Stack};
use crate::routing::{RequestMatcher, RouteAction};
use crate::upstream::{EndpointObserver, EndpointTls, Forward, UpstreamClients};

/// `inner` under `layer` when there is one, else `inner` alone.
fn optional<L: Layer<S>, S>(layer: Option<L>, inner: S) -> Either<L::Service, S> {
    match layer {
        Some(layer) => Either::Left(layer.layer(inner)),
        None => Either::Right(inner),
    }
}

/// The policies one stack references, whether it serves a service, a route or inbound.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyRefs<'a> {
    /// Timeout name or duration.
    pub timeout: Option<&'a str>,
    /// Retry policy name.
    pub retry: Option<&'a str>,
    /// Rate limit name.
    pub rate_limit: Option<&'a str>,
    /// Fallback name.
    pub fallback: Option<&'a str>,
    /// Fault name.
    pub fault: Option<&'a str>,
}

impl<'a> PolicyRefs<'a> {
    fn of_service(service: &'a ServiceSection) -> Self {
        Self {
            timeout: service.timeout.as_deref(),
            retry: service.retry.as_deref(),
            rate_limit: service.rate_limit.as_deref(),
            fallback: service.fallback.as_deref(),
            fault: service.fault.as_deref(),
        }
    }

    /// A route's references: each one it names replaces the service's.
    fn of_route(route: &'a RouteSection, service: Self) -> Self {
        Self {
            timeout: route.timeout.as_deref().or(service.timeout),
            retry: route.retry.as_deref().or(service.retry),
            rate_limit: route.rate_limit.as_deref().or(service.rate_limit),
            fallback: route.fallback.as_deref().or(service.fallback),
            fault: route.fault.as_deref().or(service.fault),
        }
    }
}

/// What a service (or the inbound app) is, for building its stacks.
pub struct StackTarget<'a> {
    /// Its name (metrics label, errors).
    pub name: Arc<str>,
    /// Where its section is in the config (errors).
    pub path: FieldPath,
    /// Its endpoints.
    pub endpoints: Arc<EndpointSet>,
    /// Protocol toward them.
    pub protocol: UpstreamProtocol,
    /// The default policies.
    pub refs: PolicyRefs<'a>,
    /// Routes with policies of their own.
    pub routes: &'a [RouteSection],
    /// The service breaker's policy name.
    pub breaker: Option<&'a str>,
    /// The endpoint breakers' policy name.
    pub endpoint_breaker: Option<&'a str>,
    /// The concurrency cap.
    pub max_in_flight: Option<usize>,
    /// Told of every attempt (outlier ejection); the endpoint breakers join them.
    pub observers: Vec<Arc<dyn EndpointObserver>>,
    /// Which endpoints are reached over TLS (default: none).
    pub tls: EndpointTls,
}

impl<'a> StackTarget<'a> {
    /// An outbound service.
    pub fn service(
        name: Arc<str>,
        endpoints: Arc<EndpointSet>,
        service: &'a ServiceSection,
    ) -> Self {
        Self {
            path: FieldPath::root().key("services").key(name.as_ref()),
            name,
            endpoints,
            protocol: service.protocol,
            refs: PolicyRefs::of_service(service),
            routes: &service.routes,
            breaker: service.breaker.as_deref(),
            endpoint_breaker: service.endpoint_breaker.as_deref(),
            max_in_flight: service.max_in_flight,
            observers: Vec::new(),
            tls: EndpointTls::Plaintext,
        }
    }

    /// The local app behind the inbound listener.
    pub fn inbound(
        name: Arc<str>,
        endpoints: Arc<EndpointSet>,
        inbound: &'a InboundSection,
    ) -> Self {
        Self {
            path: FieldPath::root().key("inbound"),
            name,
            endpoints,
            protocol: inbound.protocol,
            refs: PolicyRefs {
                timeout: inbound.timeout.as_deref(),
                retry: None,
                rate_limit: inbound.rate_limit.as_deref(),
                fallback: inbound.fallback.as_deref(),
                fault: inbound.fault.as_deref(),
            },
            routes: &[],
            breaker: None,
            endpoint_breaker: None,
            max_in_flight: inbound.max_in_flight,
            observers: Vec::new(),
            tls: EndpointTls::Plaintext,
        }
    }
}

/// A service's stacks before fallbacks are added (alternates must exist first).
pub struct CoreStacks<'a> {
    target: StackTarget<'a>,
    /// The default stack.
    pub default: CoreStack,
    /// Each route's matcher, stack, policies and `route` label, in configured order.
    routes: Vec<(RequestMatcher, CoreStack, PolicyRefs<'a>, &'a str)>,
    /// The breakers built for it.
    pub breakers: Vec<BreakerSource>,
}

impl CoreStacks<'_> {
    /// The endpoint set the stacks send to.
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.target.endpoints.clone()
    }
}

/// A service's finished stacks.
pub struct ServiceStacks {
    /// For requests no route takes.
    pub default: Stack,
    /// Routes, in configured order (the target sorts them by precedence).
    pub routes: Vec<RouteStack>,
}

/// A configured route of a service, built.
pub struct RouteStack {
    /// Which requests it takes.
    pub matcher: RequestMatcher,
    /// Its `route` metrics label ([`RouteSection::label`]).
    pub label: Arc<str>,
    /// The stack its requests go through (the leg of its own service, when it splits).
    pub stack: Stack,
    /// What it does besides (backends, edits, answers, mirror); set once every
    /// service's stacks exist, since a backend is another service's stack.
    pub action: Option<RouteAction<Stack>>,
}

/// Builds stacks from one config's policies.
pub struct StackBuilder<'c> {
    policies: &'c PoliciesSection,
    metrics: &'c PolicyMetrics,
    clients: UpstreamClients,
    /// The stateful layers of the config before, taken back where unchanged.
    previous: Option<&'c PolicyCarry>,
    /// The stateful layers built (or taken back) here, for the next config.
    next: RefCell<PolicyCarry>,
}

impl<'c> StackBuilder<'c> {
    /// A builder for `policies`, counting into `metrics`, sending over `clients`.
    pub fn new(
        policies: &'c PoliciesSection,
        metrics: &'c PolicyMetrics,
        clients: UpstreamClients,
    ) -> Self {
        Self {
            policies,
            metrics,
            clients,
            previous: None,
            next: RefCell::new(PolicyCarry::default()),
        }
    }

    /// The same builder, taking back the unchanged stateful layers of `previous` (an
    /// open breaker stays open across a reload that leaves its policy alone).
    pub fn carrying(mut self, previous: Option<&'c PolicyCarry>) -> Self {
        self.previous = previous;
        self
    }

    /// The stateful layers this builder made or took back.
    pub fn into_carry(self) -> PolicyCarry {
        self.next.into_inner()
    }

    /// The layer `kind` of `service` for `policy` defined as `definition` (its `Debug`
    /// text), taken back from the previous config when defined the same, else built.
    fn carried<T: Clone + Send + Sync + 'static>(
        &self,
        service: &Arc<str>,
        kind: &'static str,
        policy: &str,
        definition: String,
        build: impl FnOnce() -> Result<T, BuildError>,
    ) -> Result<T, BuildError> {
        let key = CarryKey::new(service, kind, policy);
        carried(
            self.previous,
            &mut self.next.borrow_mut(),
            key,
            definition,
            build,
        )
    }

    /// Everything but the fallbacks: the layers are built once per service and shared
    /// by its routes (one breaker, one concurrency cap, one limiter and one retry budget
    /// per policy name), so a route does not split the service's state.
    pub fn core<'a>(&self, target: StackTarget<'a>) -> Result<CoreStacks<'a>, BuildError> {
        let name = target.name.clone();
        let mut breakers = Vec::new();
        let mut observers: Vec<Arc<dyn EndpointObserver>> = target.observers.clone();
        if let Some(policy) = target.endpoint_breaker {
            // Tied to the endpoint set too: a new set (a new source) starts afresh.
            let definition = format!(
                "{:?} {:p}",
                self.policies.breakers.get(policy),
                Arc::as_ptr(&target.endpoints)
            );
            let endpoint_breakers =
                self.carried(&name, "endpoint_breaker", policy, definition, || {
                    Ok(Arc::new(EndpointBreakers::new(
                        name.clone(),
                        self.breaker(policy)?,
                        target.endpoints.clone(),
                        self.metrics.breaker.clone(),
                    )))
                })?;
            breakers.push(BreakerSource::Endpoints(endpoint_breakers.clone()));
            observers.push(endpoint_breakers);
        }
        let forward = Forward::new(
            name.clone(),
            target.endpoints.clone(),
            target.protocol,
            self.clients.clone(),
        )
        .with_observers(observers)
        .with_tls(target.tls.clone());
        let service_breaker = match target.breaker {
            Some(policy) => {
                let definition = format!("{:?}", self.policies.breakers.get(policy));
                let layer = self.carried(&name, "breaker", policy, definition, || {
                    let config = self.breaker(policy)?;
                    Ok(ServiceBreakerLayer::new(
                        name.clone(),
                        config,
                        self.metrics.breaker.clone(),
                    ))
                })?;
                breakers.push(BreakerSource::Service(layer.handle()));
                Some(layer)
            }
            None => None,
        };
        let concurrency = match resolve::max_in_flight(target.max_in_flight) {
            Some(max_in_flight) => Some(self.carried(
                &name,
                "max_in_flight",
                "",
                max_in_flight.to_string(),
                || {
                    Ok(ConcurrencyLayer::new(
                        name.clone(),
                        ConcurrencyConfig { max_in_flight },
                        &self.metrics.concurrency,
                    ))
                },
            )?),
            None => None,
        };

        let mut shared = SharedLayers::default();
        let build =
            |refs: PolicyRefs<'a>, shared: &mut SharedLayers| -> Result<CoreStack, BuildError> {
                let fault = active(refs.fault)
                    .map(|fault| shared.fault(self, &name, fault))
                    .transpose()?;
                let stack = optional(fault, forward.clone());
                let stack = optional(service_breaker.clone(), stack);
                let retry = active(refs.retry)
                    .map(|retry| shared.retry(self, &name, retry))
                    .transpose()?;
                let stack = optional(retry, stack);
                let timeout = resolve::timeout(self.policies, refs.timeout)
                    .map_err(|e| e.under("timeout"))?;
                let stack = TimeoutLayer::new(timeout, name.clone(), self.metrics.timeout.clone())
                    .layer(stack);
                let stack = optional(concurrency.clone(), stack);
                let limit = active(refs.rate_limit)
                    .map(|limit| shared.rate_limit(self, &name, limit))
                    .transpose()?;
                Ok(optional(limit, stack))
            };
        let default = build(target.refs, &mut shared).map_err(|e| e.within(&target.path))?;
        let mut routes = Vec::new();
        for (i, route) in target.routes.iter().enumerate() {
            let path = target.path.key("routes").index(i);
            let matcher =
                resolve::route_match(&route.matches).map_err(|e| e.within(&path.key("match")))?;
            let refs = PolicyRefs::of_route(route, target.refs);
            let stack = build(refs, &mut shared).map_err(|e| e.within(&path))?;
            routes.push((matcher, stack, refs, route.label()));
        }
        Ok(CoreStacks {
            target,
            default,
            routes,
            breakers,
        })
    }

    /// Adds each stack's fallback; `alternate` gives another service's core stack.
    pub fn finish(
        &self,
        core: CoreStacks<'_>,
        alternate: &dyn Fn(&str) -> Option<ServiceStack>,
    ) -> Result<ServiceStacks, BuildError> {
        let name = core.target.name.clone();
        let mut cache: HashMap<&str, FallbackLayer> = HashMap::new();
        let mut with_fallback =
            |stack: CoreStack, refs: PolicyRefs<'_>| -> Result<Stack, BuildError> {
                let Some(policy) = active(refs.fallback) else {
                    return Ok(Either::Right(stack));
                };
                let layer = match cache.get(policy) {
                    Some(layer) => layer.clone(),
                    None => {
                        let path = definition("fallbacks", policy);
                        let (key, found) = self
                            .policies
                            .fallbacks
                            .get_key_value(policy)
                            .ok_or_else(|| BuildError::at(path.clone(), "no such fallback"))?;
                        let config =
                            resolve::fallback(found, alternate).map_err(|e| e.within(&path))?;
                        let layer =
                            FallbackLayer::new(name.clone(), config, self.metrics.fallback.clone());
                        cache.insert(key.as_str(), layer.clone());
                        layer
                    }
                };
                Ok(Either::Left(layer.layer(stack)))
            };
        let default = with_fallback(core.default, core.target.refs)?;
        let mut routes = Vec::new();
        for (matcher, stack, refs, label) in core.routes {
            routes.push(RouteStack {
                matcher,
                label: Arc::from(label),
                stack: with_fallback(stack, refs)?,
                action: None,
            });
        }
        Ok(ServiceStacks { default, routes })
    }

    /// The breaker policy `name`, converted.
    fn breaker(
        &self,
        name: &str,
    ) -> Result<crate::policy::circuit_breaker::BreakerConfig, BuildError> {
        let path = definition("breakers", name);
        let policy = lookup(&self.policies.breakers, &path, name)?;
        resolve::breaker(policy).map_err(|e| e.within(&path))
    }
}

/// Where the policy `name` of `section` (`retries`, `breakers`, ...) is defined.
fn definition(section: &str, name: &str) -> FieldPath {
    FieldPath::root().key("policies").key(section).key(name)
}

/// The definition of `name` in `map`, found at `path`.
fn lookup<'p, V>(
    map: &'p std::collections::BTreeMap<String, V>,
    path: &FieldPath,
    name: &str,
) -> Result<&'p V, BuildError> {
    map.get(name)
        .ok_or_else(|| BuildError::at(path.clone(), format!("no such policy `{name}`")))
}

/// A reference that is set and not `none`.
fn active(reference: Option<&str>) -> Option<&str> {
    reference.filter(|name| *name != NONE)
}

/// Layers shared by the stacks of one service, by policy name.
#[derive(Default)]
struct SharedLayers {
    retry: HashMap<String, RetryLayer>,
    rate_limit: HashMap<String, RateLimitLayer>,
    fault: HashMap<String, FaultLayer>,
}

impl SharedLayers {
    fn retry(
        &mut self,
        builder: &StackBuilder<'_>,
        service: &Arc<str>,
        name: &str,
    ) -> Result<RetryLayer, BuildError> {
        shared(
            &mut self.retry,
            &builder.policies.retries,
            "retries",
            name,
            |policy| {
                builder.carried(service, "retry", name, format!("{policy:?}"), || {
                    let layer = RetryLayer::new(
                        resolve::retry(policy)?,
                        service.clone(),
                        builder.metrics.retry.clone(),
                    );
                    Ok(layer.with_timeout_metrics(builder.metrics.timeout.clone()))
                })
            },
        )
    }

    fn rate_limit(
        &mut self,
        builder: &StackBuilder<'_>,
        service: &Arc<str>,
        name: &str,
    ) -> Result<RateLimitLayer, BuildError> {
        let definitions = &builder.policies.rate_limits;
        shared(
            &mut self.rate_limit,
            definitions,
            "rate_limits",
            name,
            |policy| {
                builder.carried(service, "rate_limit", name, format!("{policy:?}"), || {
                    let config = resolve::rate_limit(policy)?;
                    let metrics = &builder.metrics.rate_limit;
                    Ok(RateLimitLayer::new(service.clone(), name, &config, metrics))
                })
            },
        )
    }

    fn fault(
        &mut self,
        builder: &StackBuilder<'_>,
        service: &Arc<str>,
        name: &str,
    ) -> Result<FaultLayer, BuildError> {
        shared(
            &mut self.fault,
            &builder.policies.faults,
            "faults",
            name,
            |policy| {
                let config = resolve::fault(policy)?;
                Ok(FaultLayer::new(
                    service.clone(),
                    config,
                    &builder.metrics.fault,
                ))
            },
        )
    }
}

/// The layer of the policy `name` (defined in `section` of `definitions`), built once per
/// service and found in `cache` after that; a refusal names the definition's field.
fn shared<P, L: Clone>(
    cache: &mut HashMap<String, L>,
    definitions: &std::collections::BTreeMap<String, P>,
    section: &str,
    name: &str,
    build: impl FnOnce(&P) -> Result<L, BuildError>,
) -> Result<L, BuildError> {
    if let Some(layer) = cache.get(name) {
        return Ok(layer.clone());
    }
    let path = definition(section, name);
    let policy = lookup(definitions, &path, name)?;
    let layer = build(policy).map_err(|e| e.within(&path))?;
    cache.insert(name.to_string(), layer.clone());
    Ok(layer)
}
