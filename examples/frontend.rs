//! The `frontend` example service (see examples/services/frontend.rs).
//!
//! Environment: `LISTEN` (default `127.0.0.1:8080`), `ORDERS_URL` (orders through the
//! sidecar, default `http://127.0.0.1:15101`), `LATENCY`, `ERROR_RATE`.

#[path = "services/mod.rs"]
mod services;

use services::{env_or, frontend::Frontend, knobs::Knobs};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = env_or("LISTEN", "127.0.0.1:8080");
    let orders = env_or("ORDERS_URL", "http://127.0.0.1:15101");
    let knobs = Knobs::from_env()?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("frontend on {listen}, orders at {orders}, {knobs:?}");
    tokio::select! {
        _ = Frontend::new(&orders, knobs).serve(listener) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
