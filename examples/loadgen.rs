//! The load generator of the example topology (see examples/services/loadgen.rs).
//!
//! Environment: `TARGET` (frontend's sidecar, default `http://127.0.0.1:15006`), `RATE`
//! (calls per second, default 20).

#[path = "services/mod.rs"]
mod services;

use std::time::Duration;

use services::env_or;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = env_or("TARGET", "http://127.0.0.1:15006");
    let rate: u32 = env_or("RATE", "20").parse()?;
    println!("loadgen: {rate}/s to {target}/checkout/<item>");
    tokio::select! {
        _ = services::loadgen::run(&target, rate, Duration::from_secs(1)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
