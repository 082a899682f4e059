//! Arbitrary UTF-8 as a YAML configuration file: load, translate, serialize. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessile_config::{Loader, TranslateOptions, translate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let loaded = Loader::new().load_str("fuzz.yaml", text);
    for e in &loaded.errors {
        let _ = e.to_string();
    }
    let opts = TranslateOptions { naming_salt: b"fuzz-salt-0123456789".to_vec(), ..TranslateOptions::default() };
    let t = translate(&loaded.resources, &opts);
    let _ = serde_json::to_string(&t.snapshot).expect("snapshot serializes");
    let _ = t.snapshot.backends();
    for port in &t.snapshot.ports {
        let _ = port.routes.rules();
    }
});
