//! The `orders` example service (see examples/services/orders.rs).
//!
//! Environment: `LISTEN` (default `127.0.0.1:8081`), `INVENTORY_URL` (inventory through
//! the sidecar, default `http://127.0.0.1:15102`), `LATENCY`, `ERROR_RATE`.

#[path = "services/mod.rs"]
mod services;

use services::{env_or, knobs::Knobs, orders::Orders};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = env_or("LISTEN", "127.0.0.1:8081");
    let inventory = env_or("INVENTORY_URL", "http://127.0.0.1:15102");
    let knobs = Knobs::from_env()?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("orders on {listen}, inventory at {inventory}, {knobs:?}");
    tokio::select! {
        _ = Orders::new(&inventory, knobs)?.serve(listener) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
