//! Any bytes as a `/validate` body: the review decoder answers with a review or an
//! error, never a panic; a decoded write is planned (sanitised, rendered, placed)
//! without a panic, and a planned path stays inside the repository.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(review) = kubescribe::admission::decode_review(data) else {
        return;
    };
    let config = kubescribe::config::Config::default();
    let layout = kubescribe::manifest::Layout::new(
        &config.repository.root,
        &config.repository.path_template,
    )
    .expect("the default layout");
    for secrets in [
        kubescribe::config::SecretMode::Omit,
        kubescribe::config::SecretMode::Redact,
    ] {
        if let Ok(change) = kubescribe::manifest::plan(&review.write, &layout, secrets) {
            let path = change.path.as_str();
            assert!(
                !path.starts_with('/')
                    && !path
                        .split('/')
                        .any(|c| c == ".." || c == "." || c.is_empty()),
                "{path}"
            );
        }
    }
});
