//! Secrets stay secret: the Consul ACL token reaches Consul (over HTTPS) but never the
//! admin `/config` page nor the log, even at debug; and a private key file that others
//! on the host can read is named in one warning at start, once however many blocks use
//! it.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::discovery_consul::start_fake_with;
use crate::support::pki::Pki;
use crate::support::{self, otlp_receiver, Process};

const TOKEN: &str = "s3cret-consul-token-7f2c";

#[tokio::test]
async fn the_consul_token_stays_out_of_config_and_logs_and_exposed_keys_are_named() {
    let pki = Pki::new();
    let (consul, consul_addr) = start_fake_with(Some(pki.server(&[b"http/1.1"], true))).await;
    let (collector, _received) = otlp_receiver::grpc_tls(pki.server(&[b"h2"], true)).await;
    // The client key, copied readable by everyone, used by two blocks.
    let exposed = pki.dir.path().join("exposed-key.pem");
    std::fs::copy(&pki.client_key, &exposed).unwrap();
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let (ca, cert, own_key) = (
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display(),
    );
    let exposed_path = exposed.display();
    let yaml = format!(
        "service: orders\n\
         admin: {{ listen: {admin} }}\n\
         tls: {{ cert: {cert}, key: {own_key}, bundle: {ca} }}\n\
         registries:\n\
         \x20 main:\n\
         \x20   consul:\n\
         \x20     address: https://{consul_addr}\n\
         \x20     token: {TOKEN}\n\
         \x20     tls: {{ ca: {ca}, cert: {cert}, key: {exposed_path} }}\n\
         services:\n\
         \x20 payments:\n\
         \x20   listen: 127.0.0.1:0\n\
         \x20   discovery: {{ registry: main }}\n\
         tracing:\n\
         \x20 endpoint: https://127.0.0.1:{}\n\
         \x20 tls: {{ ca: {ca}, cert: {cert}, key: {exposed_path} }}\n",
        collector.port()
    );
    let path = pki.dir.path().join("remora.yaml");
    std::fs::write(&path, yaml).unwrap();
    let process = Process::run_logging(&path, admin, "debug").await;

    // The watch talks to Consul over HTTPS, with the token.
    let asked = support::eventually(Duration::from_secs(5), || async {
        consul.tokens.lock().unwrap().len() >= 2
    })
    .await;
    assert!(asked, "remora never asked Consul: {}", process.log());
    assert!(consul.tokens.lock().unwrap().iter().all(|t| t == TOKEN));

    let (status, _, shown) = support::get(&format!("http://{admin}/config")).await;
    assert_eq!(status, 200);
    assert!(!shown.contains(TOKEN), "/config shows the token:\n{shown}");
    assert!(shown.contains(remora::config::REDACTED), "{shown}");
    assert!(
        shown.contains(&exposed_path.to_string()),
        "paths stay: {shown}"
    );

    let log = process.log();
    assert!(!log.contains(TOKEN), "the log holds the token:\n{log}");
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "debug logging was on"
    );
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("readable by")).collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning per exposed key file:\n{log}"
    );
    assert!(
        warnings[0].contains(&exposed_path.to_string())
            && warnings[0].contains("every user")
            && warnings[0].contains("0644"),
        "{}",
        warnings[0]
    );
    assert!(
        !log.contains("BEGIN PRIVATE KEY"),
        "key bytes in the log:\n{log}"
    );
}
