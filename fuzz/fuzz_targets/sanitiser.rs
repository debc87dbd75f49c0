//! Any JSON object through the sanitiser and the YAML emitter: the file parses back
//! (with an independent YAML parser) to exactly the sanitised object, so nothing is
//! lost or changed on the way to git.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut object) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if !object.is_object() {
        return;
    }
    let kind = object["kind"].as_str().unwrap_or("ConfigMap").to_owned();
    if kubescribe::manifest::sanitize(&mut object, "", &kind).is_err() {
        return;
    }
    let text = kubescribe::manifest::render(&object);
    let back: serde_json::Value = serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("the rendered YAML does not parse: {e}\n{text}"));
    assert_eq!(back, object, "round trip of\n{text}");
});
