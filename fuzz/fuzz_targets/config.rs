//! Configuration text through the loader `remora validate` uses: substitution, decoding,
//! the document's checks and the build checks. Never panics; every refusal is a
//! diagnostic naming the text, at a line and column inside it (a blank file has no
//! place to point at); what loads renders (`to_yaml`, the admin `/config` page) to text
//! that loads back to the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora::config::{to_yaml, ConfigError};
use remora::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match fuzzing::config(text) {
        Ok(config) => {
            let rendered = to_yaml(&config);
            let again = fuzzing::config(&rendered).unwrap_or_else(|error| {
                panic!("the rendering of a loaded config does not load: {error}\n{rendered}")
            });
            assert_eq!(
                to_yaml(&again),
                rendered,
                "the rendering changed on a reload"
            );
        }
        Err(ConfigError::TooLarge { .. }) => {}
        Err(error) => {
            let diagnostics = error.diagnostics();
            assert!(
                !diagnostics.is_empty(),
                "a refusal without a diagnostic: {error}"
            );
            // YAML breaks lines at `\n`, `\r\n` and a bare `\r`.
            let lines = 1 + text.replace("\r\n", "\n").matches(['\n', '\r']).count();
            for diagnostic in diagnostics {
                assert_eq!(diagnostic.origin, "fuzz.yaml");
                match diagnostic.position {
                    Some(at) => {
                        assert!(
                            (1..=lines).contains(&at.line) && at.column >= 1,
                            "position {at} outside the text: {diagnostic}"
                        );
                        assert!(!diagnostic.snippet.is_empty(), "no snippet: {diagnostic}");
                    }
                    None => assert!(
                        diagnostic.message.starts_with("the file is empty"),
                        "a diagnostic without a position: {diagnostic}"
                    ),
                }
            }
        }
    }
});
