//! The `inventory` example service (see examples/services/inventory.rs).
//!
//! Environment: `LISTEN` (default `127.0.0.1:8082`), `INSTANCE` (the name in replies,
//! default `inventory`), `LATENCY`, `ERROR_RATE`.

#[path = "services/mod.rs"]
mod services;

use services::{env_or, inventory::Inventory, knobs::Knobs};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = env_or("LISTEN", "127.0.0.1:8082");
    let instance = env_or("INSTANCE", "inventory");
    let knobs = Knobs::from_env()?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("inventory {instance} on {listen}, {knobs:?}");
    tokio::select! {
        served = Inventory::new(instance, knobs).serve(listener) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
