//! What registries answer, read as the watches read it: an etcd value (also a discovery
//! file record), a Consul health answer, a Nacos instance list, a discovery file (JSON
//! or YAML), a Eureka full fetch followed by a delta (split at the first 0xff byte), and a
//! ZooKeeper znode in Curator's ServiceInstance JSON (which, written back as remora
//! registers it, reads back to the same address, weight and metadata).
//! The first byte picks the reader. Never panics; an etcd value read writes back to
//! one that reads the same; every instance that takes traffic has a weight of at least 1
//! (where the reader promises one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora::discovery::Instance;
use remora::fuzzing;

fn weighted(instances: &[Instance]) {
    for instance in instances {
        assert!(instance.weight >= 1, "{instance:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    match pick % 7 {
        0 => {
            if let Ok(instance) = fuzzing::etcd_value(body) {
                let written = instance.to_json();
                let again = fuzzing::etcd_value(written.as_bytes())
                    .unwrap_or_else(|e| panic!("{written} does not read back: {e}"));
                assert_eq!(again, instance, "{written}");
            }
        }
        1 => {
            if let Ok(instances) = fuzzing::consul_health(body) {
                weighted(&instances);
            }
        }
        2 => {
            if let Ok((instances, _)) = fuzzing::nacos_list(body) {
                weighted(&instances);
            }
        }
        3 | 4 => {
            let Ok(text) = std::str::from_utf8(body) else {
                return;
            };
            let _ = fuzzing::discovery_file(text, pick % 7 == 3, "orders");
        }
        6 => {
            if let Ok(Some(instance)) = fuzzing::curator_instance(body) {
                weighted(std::slice::from_ref(&instance));
                let written = fuzzing::curator_registration(&instance);
                let again = fuzzing::curator_instance(written.as_bytes())
                    .unwrap_or_else(|e| panic!("{written} does not read back: {e}"))
                    .unwrap_or_else(|| panic!("{written} reads back as taking no traffic"));
                assert_eq!(
                    (again.addr, again.weight, &again.metadata),
                    (instance.addr, instance.weight, &instance.metadata),
                    "{written}"
                );
            }
        }
        _ => {
            let (full, delta) = match body.iter().position(|b| *b == 0xff) {
                Some(at) => (&body[..at], &body[at + 1..]),
                None => (body, &[][..]),
            };
            if let Ok(refresh) = fuzzing::eureka_refresh(full, delta, "orders") {
                weighted(&refresh.full.0);
                if let Some((instances, _)) = &refresh.delta {
                    weighted(instances);
                }
            }
        }
    }
});
