//! Any path template and any object name and namespace: a template is accepted or
//! refused, never a panic, and an accepted one places every object inside the
//! repository, at a path git can check out.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let (Some(root), Some(template), Some(namespace), Some(name)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let Ok(layout) = kubescribe::manifest::Layout::new(root, template) else {
        return;
    };
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "operation": "CREATE",
            "namespace": namespace,
            "name": name,
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}},
        }
    });
    let Ok(review) = kubescribe::admission::decode_review(review.to_string().as_bytes()) else {
        return;
    };
    if let Ok(change) =
        kubescribe::manifest::plan(&review.write, &layout, kubescribe::config::SecretMode::Omit)
    {
        let path = change.path.as_str();
        assert!(!path.starts_with('/'), "{path}");
        for component in path.split('/') {
            assert!(
                !component.is_empty() && component != "." && component != "..",
                "{path}"
            );
            assert!(!component.eq_ignore_ascii_case(".git"), "{path}");
            assert!(component.len() <= 255, "{path}");
        }
    }
});
