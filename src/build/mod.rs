//! Floor 4, build: a validated [`Config`](crate::config::Config) becomes typed settings
//! and stacks, once per config.
//!
//! - `resolve`: each YAML section to the typed settings of the mechanism it configures;
//! - `stack`: a service's policy stacks, outermost first;
//! - `pump`: discovery feeds that keep endpoint sets current;
//! - `route`: the route table the proxy looks a request's service up in;
//! - `metrics`: the Prometheus registry, aggregating every mechanism's metrics;
//! - `connections`: each service's upstream connections, counted at scrape time;
//! - `state`: one config's whole snapshot (targets, discovery, breakers);
//! - `tcp`: the targets of `protocol: tcp` services and of a TCP inbound listener.
//!
//! Config flows down through here and nowhere else: no mechanism names a YAML type.

pub mod carry;
pub mod connections;
pub mod metrics;
mod process_metrics;
pub mod pump;
pub mod resolve;
pub mod route;
pub mod stack;
pub mod state;
pub mod tcp;
pub mod validate;

pub use validate::{load, parse, parse_with_env};
