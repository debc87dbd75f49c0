//! `kubescribe-load`: the benchmark driver behind `make bench`.
//!
//! - `run` replays fixture reviews against a webhook over HTTPS keep-alive and prints
//!   a JSON report (throughput, p50/p99/max);
//! - `noop` serves the no-op axum + rustls baseline responder;
//! - `fast-import` writes a `git fast-import` stream of N one-file commits, the
//!   baseline for commit throughput;
//! - `acked` sends distinct writes until the server goes away (the fault suite kills
//!   it) and prints, one line each as the answer arrives, the file of every write
//!   the server acknowledged;
//! - `cluster` serves a synthetic cluster over plain HTTP for the reconcile snapshot:
//!   the recorded v1.19 core discovery, and N ConfigMaps made from a recorded one,
//!   paged with `limit`/`continue` and in key order like kube-apiserver; with `--churn-rate`, its
//!   ConfigMaps watch streams that many changes per second (watch churn).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use kubescribe::load::{self, Client, LoadSpec};

#[derive(Parser)]
#[command(about = "Load generator and baselines for kubescribe benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay fixture reviews (each made a distinct write) and print a JSON report.
    Run {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, default_value = "tests/fixtures/admission/k8s-1.19")]
        fixtures: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Total requests per second; without it, as fast as the server answers.
        #[arg(long)]
        rate: Option<f64>,
        /// Offset for generated names, so runs against one repository stay distinct.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Spread namespaced objects over this many namespaces (0: keep team-a).
        #[arg(long, default_value_t = 64)]
        namespaces: usize,
        #[arg(long, default_value = "run")]
        label: String,
        /// Instead of the fixtures, creates of one kind made here: `secret` or
        /// `configmap`, each with `--keys` values of `--value-bytes` bytes
        /// (base64 in both, new bytes for every write), so both weigh the same.
        #[arg(long)]
        synthetic: Option<String>,
        #[arg(long, default_value_t = 4)]
        keys: usize,
        #[arg(long, default_value_t = 192)]
        value_bytes: usize,
    },
    /// Send distinct ConfigMap creates until the server stops answering (or
    /// `--requests`), printing the repository path of each write the server
    /// acknowledged (allowed with a `recorded` or `pushed` warning), one per line,
    /// flushed as it comes.
    Acked {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, default_value = "tests/fixtures/admission/k8s-1.19")]
        fixtures: PathBuf,
        #[arg(long, default_value_t = usize::MAX)]
        requests: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Offset for generated names, so runs against one repository stay distinct.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long, default_value_t = 16)]
        namespaces: usize,
    },
    /// Serve the no-op baseline responder until killed.
    Noop {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Serve a synthetic cluster of `objects` ConfigMaps until killed.
    Cluster {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        objects: usize,
        #[arg(long, default_value = "tests/fixtures/api/k8s-1.19")]
        fixtures: PathBuf,
        /// The order lists return objects in: `key`, kube-apiserver's (etcd's key
        /// order: namespace, then name), or `spread`, object 0, 1, 2, ... (each
        /// in the next namespace), so every page touches every namespace.
        #[arg(long, value_enum, default_value_t = ListOrder::Key)]
        order: ListOrder,
        #[command(flatten)]
        churn: Churn,
    },
    /// Write a fast-import stream of the same commits a `run` with the same
    /// --requests and --namespaces records: same paths, same file bytes.
    FastImport {
        #[arg(long)]
        commits: usize,
        #[arg(long, default_value = "tests/fixtures/admission/k8s-1.19")]
        fixtures: PathBuf,
        #[arg(long, default_value_t = 64)]
        namespaces: usize,
    },
    /// Index a synthetic GitOps repository of `manifests` objects (kustomize apps
    /// under overlays) and the real fixture repositories; print a JSON report of the
    /// build time next to the floor (parsing every document once) and of a lookup.
    Index {
        #[arg(long, default_value_t = 10_000)]
        manifests: usize,
        #[arg(long, default_value = "tests/fixtures/repos")]
        fixtures: PathBuf,
    },
}

/// A repository of `manifests` documents shaped like a real one: apps of ten
/// (a Deployment, a Service, eight ConfigMaps in one multi-document file), each a
/// kustomize base with its namespace, and two environments' overlays listing them
/// all with a name prefix each (so `2 × manifests` objects).
fn synthetic_repository(manifests: usize) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let apps = manifests.div_ceil(10);
    let mut listed = String::new();
    for app in 0..apps {
        let dir = format!("apps/app-{app}");
        files.insert(
            format!("{dir}/kustomization.yaml"),
            format!("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: app-{app}\nresources:\n  - deployment.yaml\n  - service.yaml\n  - configmaps.yaml\n").into_bytes(),
        );
        files.insert(
            format!("{dir}/deployment.yaml"),
            format!("# The app's web server.\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n    app: app-{app}\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: app-{app}\n  template:\n    metadata:\n      labels:\n        app: app-{app}\n    spec:\n      containers:\n        - name: web\n          image: ghcr.io/example/app-{app}:1.0.{app}\n          ports:\n            - containerPort: 8080\n").into_bytes(),
        );
        files.insert(
            format!("{dir}/service.yaml"),
            format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: app-{app}\n  ports:\n    - port: 80\n      targetPort: 8080\n").into_bytes(),
        );
        let configmaps: String = (0..8)
            .map(|i| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings-{i}\ndata:\n  LOG_LEVEL: info\n  FEATURE_{i}: \"on\"\n"))
            .collect();
        files.insert(format!("{dir}/configmaps.yaml"), configmaps.into_bytes());
        listed.push_str(&format!("  - ../../apps/app-{app}\n"));
    }
    // Two environments over the same bases, as overlays with a name prefix each:
    // every base is walked twice, and every document declares two objects.
    for (env, prefix) in [("staging", "stg-"), ("production", "prd-")] {
        files.insert(
            format!("clusters/{env}/kustomization.yaml"),
            format!("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamePrefix: {prefix}\nresources:\n{listed}").into_bytes(),
        );
    }
    files
}

/// Every file under `dir`, by its path inside it.
fn read_tree(dir: &std::path::Path) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let mut files = std::collections::BTreeMap::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(at) = dirs.pop() {
        for entry in std::fs::read_dir(&at)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Some(relative) = path.strip_prefix(dir)?.to_str() {
                files.insert(relative.to_owned(), std::fs::read(&path)?);
            }
        }
    }
    Ok(files)
}

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/<pid>/stat (11 and 12 after the
    // command); the kernel counts in USER_HZ, 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of this process, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What an UPDATE costs the writer as an edit of a person's file (diff, lossless edit,
/// check by parsing back) against the canonical write of the same object (sanitise
/// and render), in the same run: an image change of a real Deployment, and a label on
/// the last document of a real three-document file.
fn measure_edits(fixtures: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    use kubescribe::declared::edit;
    use serde::Deserialize;
    use serde_json::{json, Value};
    let cases = [
        (
            "image of a Deployment (74 lines)",
            "stefanprodan__podinfo/deploy/webapp/backend/deployment.yaml",
            "/spec/template/spec/containers/0/image",
            json!("ghcr.io/stefanprodan/podinfo:6.15.0"),
        ),
        (
            "label on document 3 of 3 (HelmRelease)",
            "fluxcd__flux2-kustomize-helm-example/infrastructure/controllers/cert-manager.yaml",
            "/metadata/labels",
            json!({"team": "platform"}),
        ),
    ];
    let mut out = serde_json::Map::new();
    for (label, path, pointer, value) in cases {
        let file = std::fs::read(fixtures.join(path)).with_context(|| format!("read {path}"))?;
        let documents: Vec<Value> = serde_yaml_ng::Deserializer::from_slice(&file)
            .map(Value::deserialize)
            .collect::<Result<_, _>>()?;
        let document = documents.len() - 1;
        let mut old = documents[document].clone();
        old["metadata"]["namespace"] = json!("team-a");
        old["metadata"]["resourceVersion"] = json!("41");
        old["metadata"]["managedFields"] = json!([{"manager": "kubectl"}]);
        let mut new = old.clone();
        match new.pointer_mut(pointer) {
            Some(slot) => *slot = value,
            None => new["metadata"]["labels"] = value,
        }
        let (group, kind) = {
            let api_version = old["apiVersion"].as_str().unwrap_or_default();
            let group = api_version
                .rsplit_once('/')
                .map_or("", |(g, _)| g)
                .to_owned();
            (group, old["kind"].as_str().unwrap_or_default().to_owned())
        };
        const N: u32 = 2000;
        let mut canonical_s = f64::MAX;
        let mut in_place_s = f64::MAX;
        let mut bytes = 0;
        for _ in 0..5 {
            let started = std::time::Instant::now();
            for _ in 0..N {
                let mut clean = new.clone();
                kubescribe::manifest::sanitize(&mut clean, &group, &kind)?;
                bytes = kubescribe::manifest::render(&clean).len();
            }
            canonical_s = canonical_s.min(started.elapsed().as_secs_f64() / f64::from(N));
            let started = std::time::Instant::now();
            for _ in 0..N {
                let (mut before, mut after) = (old.clone(), new.clone());
                kubescribe::manifest::sanitize(&mut before, &group, &kind)?;
                kubescribe::manifest::sanitize(&mut after, &group, &kind)?;
                let ops = edit::diff(&before, &after);
                let edited = edit::update(&file, document, &ops, &before, &after)?;
                anyhow::ensure!(!edited.rewritten, "{path} edited in place");
            }
            in_place_s = in_place_s.min(started.elapsed().as_secs_f64() / f64::from(N));
        }
        out.insert(
            label.to_owned(),
            json!({
                "file": path,
                "file_bytes": file.len(),
                "canonical_bytes": bytes,
                "canonical_us": canonical_s * 1e6,
                "in_place_us": in_place_s * 1e6,
                "in_place_over_canonical": in_place_s / canonical_s,
            }),
        );
    }
    Ok(serde_json::Value::Object(out))
}

/// Index `files` `rounds` times; the best wall time of the floor (every document
/// parsed once) and of the build, and the index.
fn measure_index(
    files: &std::collections::BTreeMap<String, Vec<u8>>,
    rounds: usize,
) -> (f64, f64, kubescribe::declared::Index) {
    use serde::Deserialize;
    let mut floor = f64::MAX;
    let mut build = f64::MAX;
    let mut index = None;
    for _ in 0..rounds {
        let started = std::time::Instant::now();
        let mut documents = 0usize;
        for (path, bytes) in files {
            if path.ends_with(".yaml") || path.ends_with(".yml") {
                for document in serde_yaml_ng::Deserializer::from_slice(bytes) {
                    // After a syntax error the iterator repeats it: stop there.
                    if serde_json::Value::deserialize(document).is_err() {
                        break;
                    }
                    documents += 1;
                }
            }
        }
        std::hint::black_box(documents);
        floor = floor.min(started.elapsed().as_secs_f64());
        let started = std::time::Instant::now();
        let built =
            kubescribe::declared::Index::build(files, &kubescribe::declared::Settings::default());
        build = build.min(started.elapsed().as_secs_f64());
        index = Some(built);
    }
    (floor, build, index.unwrap_or_default())
}

/// Reviews that are real writes by a person: creates, not dry runs, not Secrets.
fn record_fixtures(dir: &std::path::Path) -> anyhow::Result<Vec<load::Fixture>> {
    let fixtures: Vec<_> = load::read_fixtures(dir)?
        .into_iter()
        .filter(|f| {
            let r = &f.review["request"];
            f.path.starts_with("/validate")
                && r["operation"] == "CREATE"
                && r["dryRun"] != true
                && r["userInfo"]["username"] != "system:apiserver"
                && r["resource"]["resource"] != "secrets"
        })
        .collect();
    anyhow::ensure!(
        !fixtures.is_empty(),
        "no CREATE fixtures in {}",
        dir.display()
    );
    Ok(fixtures)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            addr,
            ca,
            fixtures,
            requests,
            concurrency,
            rate,
            offset,
            namespaces,
            label,
            synthetic,
            keys,
            value_bytes,
        } => {
            let fixtures = match synthetic.as_deref() {
                Some(kind) => vec![load::synthetic_create(kind, keys, value_bytes)?],
                None => record_fixtures(&fixtures)?,
            };
            let bodies: Vec<(String, Bytes)> = (0..requests)
                .map(|i| {
                    let fixture = &fixtures[i % fixtures.len()];
                    let mut review = load::spread_review(&fixture.review, offset + i, namespaces);
                    if synthetic.is_some() {
                        load::vary_values(&mut review, offset + i);
                    }
                    (
                        fixture.path.clone(),
                        Bytes::from(serde_json::to_vec(&review).expect("JSON values serialise")),
                    )
                })
                .collect();
            let client = Client::new(addr, &ca)?;
            let spec = LoadSpec {
                bodies: Arc::new(bodies),
                concurrency,
                rate,
            };
            let report = load::run(&client, &spec).await?;
            let mut line = serde_json::to_value(&report)?;
            line["label"] = label.into();
            println!("{line}");
        }
        Command::Acked {
            addr,
            ca,
            fixtures,
            requests,
            concurrency,
            offset,
            namespaces,
        } => {
            acked(
                addr,
                &ca,
                &fixtures,
                requests,
                concurrency,
                offset,
                namespaces,
            )
            .await?
        }
        Command::Index {
            manifests,
            fixtures,
        } => {
            let mut report = serde_json::Map::new();
            let rss_before = peak_rss_kib();
            let files = synthetic_repository(manifests);
            let bytes: usize = files.values().map(Vec::len).sum();
            let cpu_before = cpu_seconds();
            let (floor, build, index) = measure_index(&files, 5);
            let cpu = cpu_seconds() - cpu_before;
            // A lookup of every object, to time one.
            let keys: Vec<kubescribe::declared::Key> = index.keys().cloned().collect();
            let started = std::time::Instant::now();
            let mut hits = 0usize;
            for _ in 0..10 {
                for key in &keys {
                    hits += usize::from(matches!(
                        index.lookup(key),
                        kubescribe::declared::Lookup::Found(_)
                    ));
                }
            }
            let lookup_ns = started.elapsed().as_nanos() as f64 / (10 * keys.len().max(1)) as f64;
            // One commit's worth: one manifest changed, the index brought up to date.
            let mut index = index;
            let mut changed_files = files.clone();
            let one = "apps/app-0/deployment.yaml".to_owned();
            let mut update_s = f64::MAX;
            for round in 0..5 {
                changed_files.insert(
                    one.clone(),
                    format!(
                        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web-{round}\n"
                    )
                    .into_bytes(),
                );
                let started = std::time::Instant::now();
                index.update(
                    &changed_files,
                    std::slice::from_ref(&one),
                    &kubescribe::declared::Settings::default(),
                );
                update_s = update_s.min(started.elapsed().as_secs_f64());
            }
            report.insert(
                "synthetic".into(),
                serde_json::json!({
                    "manifests": manifests,
                    "files": files.len(),
                    "bytes": bytes,
                    "objects": index.len(),
                    "found": hits / 10,
                    "floor_parse_s": floor,
                    "build_s": build,
                    "build_over_floor": build / floor,
                    "cpu_s_for_5_rounds_of_both": cpu,
                    "lookup_ns": lookup_ns,
                    "update_one_file_s": update_s,
                    "peak_rss_kib": peak_rss_kib(),
                    "peak_rss_before_kib": rss_before,
                }),
            );
            report.insert("edit".into(), measure_edits(&fixtures)?);
            for entry in std::fs::read_dir(&fixtures)? {
                let dir = entry?.path();
                if !dir.is_dir() {
                    continue;
                }
                let files = read_tree(&dir)?;
                let (floor, build, index) = measure_index(&files, 20);
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                report.insert(
                    name,
                    serde_json::json!({
                        "files": files.len(),
                        "objects": index.len(),
                        "floor_parse_s": floor,
                        "build_s": build,
                        "build_over_floor": build / floor,
                    }),
                );
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::Value::Object(report))?
            );
        }
        Command::Noop { listen, cert, key } => {
            let tls = kubescribe::tls::server_config(&cert, &key)?;
            let listener = std::net::TcpListener::bind(listen)
                .with_context(|| format!("listen on {listen}"))?;
            listener.set_nonblocking(true)?;
            axum_server::from_tcp(listener)?
                .acceptor(kubescribe::serve::tls_acceptor(tls))
                .serve(load::noop_router().into_make_service())
                .await?;
        }
        Command::Cluster {
            listen,
            objects,
            fixtures,
            order,
            churn,
        } => cluster(listen, objects, &fixtures, order, churn).await?,
        Command::FastImport {
            commits,
            fixtures,
            namespaces,
        } => {
            let fixtures = record_fixtures(&fixtures)?;
            let config = kubescribe::config::Config::default();
            let layout = kubescribe::manifest::Layout::new(
                &config.repository.root,
                &config.repository.path_template,
            )?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for i in 0..commits {
                let fixture = &fixtures[i % fixtures.len()];
                let review = load::spread_review(&fixture.review, i, namespaces);
                let decoded = kubescribe::admission::decode_review(&serde_json::to_vec(&review)?)?;
                let change = kubescribe::manifest::plan(&decoded, &layout, config.secrets)?;
                let kubescribe::manifest::Action::Put(data) = &change.action else {
                    anyhow::bail!("{} is not a create", fixture.file);
                };
                let message = format!(
                    "{} {} {} {}\n\nKubernetes-User: {}\n",
                    change.verb.as_str(),
                    change.api_version,
                    change.kind,
                    change.object_ref(),
                    change.user
                );
                let time = 1_700_000_000 + i;
                writeln!(out, "commit refs/heads/main")?;
                writeln!(
                    out,
                    "author {} <{}@kubernetes.local> {time} +0000",
                    change.user, change.user
                )?;
                writeln!(
                    out,
                    "committer kubescribe <kubescribe@localhost> {time} +0000"
                )?;
                writeln!(out, "data {}\n{message}", message.len())?;
                writeln!(out, "M 100644 inline {}", change.path)?;
                writeln!(out, "data {}", data.len())?;
                out.write_all(data)?;
                writeln!(out)?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

/// See [`Command::Acked`]. Each worker stops at its first failed request (the server
/// is gone); the paths printed are exactly the acknowledged writes.
async fn acked(
    addr: SocketAddr,
    ca: &std::path::Path,
    fixtures: &std::path::Path,
    requests: usize,
    concurrency: usize,
    offset: usize,
    namespaces: usize,
) -> anyhow::Result<()> {
    let template = load::read_fixtures(fixtures)?
        .into_iter()
        .find(|f| f.file.starts_with("009-"))
        .context("fixture 009 (a ConfigMap create)")?;
    let config = kubescribe::config::Config::default();
    let layout = kubescribe::manifest::Layout::new(
        &config.repository.root,
        &config.repository.path_template,
    )?;
    let client = Client::new(addr, ca)?;
    let secrets = config.secrets;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, next, out) = (client.clone(), next.clone(), out.clone());
        let (template, layout) = (template.clone(), layout.clone());
        workers.push(tokio::spawn(async move {
            let Ok(mut connection) = client.connect().await else {
                return;
            };
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= requests {
                    return;
                }
                let review = load::spread_review(&template.review, offset + n, namespaces);
                let body = Bytes::from(serde_json::to_vec(&review).expect("JSON values serialise"));
                let Ok((status, answer)) = connection.review(&template.path, body).await else {
                    return;
                };
                let warnings = answer["response"]["warnings"].to_string();
                let acknowledged = status.is_success()
                    && answer["response"]["allowed"] == true
                    && (warnings.contains("\"recorded ") || warnings.contains("\"pushed "));
                if !acknowledged {
                    continue;
                }
                let Ok(decoded) = kubescribe::admission::decode_review(
                    &serde_json::to_vec(&review).expect("JSON values serialise"),
                ) else {
                    continue;
                };
                if let Ok(change) = kubescribe::manifest::plan(&decoded, &layout, secrets) {
                    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = writeln!(out, "{}", change.path);
                    let _ = out.flush();
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    Ok(())
}

/// Changes the synthetic cluster's ConfigMaps watch streams: first `warmup` changes at
/// 10 per second (the idle baseline), then, after 2 s, `rate` per second for `seconds`. Change `k`
/// has resourceVersion `368 + k` and is due at a fixed time from the first watch, so
/// a watch started again from any resourceVersion goes on where the last one ended.
#[derive(clap::Args, Clone, Copy)]
struct Churn {
    /// Changes per second after the warm-up; 0 streams no changes.
    #[arg(long = "churn-rate", default_value_t = 0)]
    rate: u64,
    #[arg(long = "churn-seconds", default_value_t = 60)]
    seconds: u64,
    #[arg(long = "churn-warmup", default_value_t = 20)]
    warmup: u64,
}

impl Churn {
    const WARMUP_RATE: u64 = 10;

    fn total(&self) -> u64 {
        if self.rate == 0 {
            return 0;
        }
        self.warmup + self.rate * self.seconds
    }

    /// When change `k` is due, after the first watch.
    fn due(&self, k: u64) -> Duration {
        if k < self.warmup {
            return Duration::from_millis(k * 1000 / Self::WARMUP_RATE);
        }
        // A pause after the warm-up, so its figures can be read apart.
        let warm = Duration::from_millis(self.warmup * 1000 / Self::WARMUP_RATE + 2000);
        warm + Duration::from_nanos((k - self.warmup) * 1_000_000_000 / self.rate.max(1))
    }
}

/// The synthetic cluster's state shared by its handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ListOrder {
    Key,
    Spread,
}

struct ClusterState {
    version: Bytes,
    api: Bytes,
    api_v1: Bytes,
    template: serde_json::Value,
    objects: usize,
    /// The objects in the order lists return them.
    listed: Vec<usize>,
    churn: Churn,
    /// When the first ConfigMaps watch came: change 0 is due then.
    started: std::sync::OnceLock<tokio::time::Instant>,
    /// How late each change was handed to the watch's connection (µs), for the
    /// report: a reader that falls behind holds the stream back.
    late_us: std::sync::Mutex<Vec<u64>>,
}

impl ClusterState {
    fn name(i: usize) -> String {
        format!("cm-{i:05}")
    }

    fn namespace(i: usize) -> String {
        format!("team-{}", i % 16)
    }

    fn object(&self, i: usize, revision: Option<u64>) -> serde_json::Value {
        let mut item = self.template.clone();
        item["metadata"]["name"] = Self::name(i).into();
        item["metadata"]["namespace"] = Self::namespace(i).into();
        item["metadata"]["uid"] = format!("00000000-0000-0000-0000-{i:012}").into();
        item["data"] = serde_json::json!({ "index": i.to_string(), "payload": "x".repeat(200) });
        if let Some(k) = revision {
            item["metadata"]["resourceVersion"] = (368 + k).to_string().into();
            item["data"]["revision"] = k.to_string().into();
        }
        item
    }

    /// The ConfigMaps watch from `from` (a resourceVersion) for `timeout`: the churn's
    /// changes after `from` as they fall due, then nothing until the timeout.
    fn watch(
        self: Arc<Self>,
        from: u64,
        timeout: Duration,
    ) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
        let started = *self.started.get_or_init(tokio::time::Instant::now);
        let ends = tokio::time::Instant::now() + timeout;
        let next = from.saturating_sub(367);
        futures::stream::unfold((self, next), move |(state, next)| async move {
            if next >= state.churn.total() {
                tokio::time::sleep_until(ends).await;
                return None;
            }
            let due = started + state.churn.due(next);
            if due >= ends {
                tokio::time::sleep_until(ends).await;
                return None;
            }
            tokio::time::sleep_until(due).await;
            // Every change due by now, in one chunk.
            let now = tokio::time::Instant::now();
            let mut chunk = Vec::new();
            let mut k = next;
            let mut late = Vec::new();
            while k < state.churn.total()
                && started + state.churn.due(k) <= now
                && chunk.len() < 1 << 20
            {
                let i = ((k * 7919) % state.objects.max(1) as u64) as usize;
                let event =
                    serde_json::json!({ "type": "MODIFIED", "object": state.object(i, Some(k)) });
                serde_json::to_writer(&mut chunk, &event).unwrap_or_default();
                chunk.push(b'\n');
                late.push(
                    now.saturating_duration_since(started + state.churn.due(k))
                        .as_micros() as u64,
                );
                k += 1;
            }
            state
                .late_us
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(late);
            if k == state.churn.total() {
                state.report();
            }
            Some((Ok(Bytes::from(chunk)), (state, k)))
        })
    }

    /// Prints how late the changes were handed over (one JSON line on stdout).
    fn report(&self) {
        let mut late = self
            .late_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        late.sort_unstable();
        let at = |q: f64| {
            late.get(((late.len() as f64 * q) as usize).min(late.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "{}",
            serde_json::json!({
                "changes": late.len(),
                "late_p50_ms": at(0.5) as f64 / 1000.0,
                "late_p99_ms": at(0.99) as f64 / 1000.0,
                "late_max_ms": late.last().copied().unwrap_or(0) as f64 / 1000.0,
            })
        );
        let _ = std::io::stdout().flush();
    }
}

/// The synthetic cluster behind the snapshot and churn benchmarks: core discovery as
/// recorded (no API groups, so only core resources are discovered), `objects`
/// ConfigMaps spread over 16 namespaces (listed in `order`), every other list empty, and watches that
/// stay open until their timeout (the ConfigMaps one streaming `churn`).
async fn cluster(
    listen: SocketAddr,
    objects: usize,
    fixtures: &std::path::Path,
    order: ListOrder,
    churn: Churn,
) -> anyhow::Result<()> {
    use axum::http::{header, Uri};
    use axum::response::IntoResponse;
    let read = |name: &str| -> anyhow::Result<Bytes> {
        Ok(Bytes::from(
            std::fs::read(fixtures.join(name)).with_context(|| format!("read {name}"))?,
        ))
    };
    let version = read("disc_version.json")?;
    let api = read("disc_api.json")?;
    let api_v1 = read("disc_api_v1.json")?;
    let list: serde_json::Value = serde_json::from_slice(&read("list_configmaps_all.json")?)?;
    let template = list["items"][0].clone();
    let mut listed: Vec<usize> = (0..objects).collect();
    if order == ListOrder::Key {
        listed.sort_by_cached_key(|&i| (ClusterState::namespace(i), ClusterState::name(i)));
    }
    let state = Arc::new(ClusterState {
        version,
        api,
        api_v1,
        template,
        objects,
        listed,
        churn,
        started: std::sync::OnceLock::new(),
        late_us: std::sync::Mutex::new(Vec::new()),
    });
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let state = state.clone();
        async move {
            let objects = &state.objects;
            let json = |body: Bytes| ([(header::CONTENT_TYPE, "application/json")], body).into_response();
            let query = uri.query().unwrap_or_default();
            let param = |key: &str| {
                query
                    .split('&')
                    .find_map(|p| p.strip_prefix(key))
                    .and_then(|v| v.parse::<usize>().ok())
            };
            if query.split('&').any(|p| p == "watch=true" || p == "watch=1") {
                let timeout = Duration::from_secs(param("timeoutSeconds=").unwrap_or(300) as u64);
                let body = if uri.path() == "/api/v1/configmaps" && churn.rate > 0 {
                    let from = param("resourceVersion=").unwrap_or(367) as u64;
                    axum::body::Body::from_stream(state.clone().watch(from, timeout))
                } else {
                    axum::body::Body::from_stream(futures::stream::once(async move {
                        tokio::time::sleep(timeout).await;
                        Ok::<_, std::convert::Infallible>(Bytes::new())
                    }))
                };
                return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
            }
            match uri.path() {
                "/version" => json(state.version.clone()),
                "/api" => json(state.api.clone()),
                "/api/v1" => json(state.api_v1.clone()),
                "/apis" => json(Bytes::from_static(br#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#)),
                "/api/v1/configmaps" => {
                    let start = param("continue=").unwrap_or(0);
                    let limit = param("limit=").unwrap_or(*objects).max(1);
                    let end = (start + limit).min(*objects);
                    let items: Vec<serde_json::Value> =
                        (start..end).map(|p| state.object(state.listed[p], None)).collect();
                    let mut metadata = serde_json::json!({ "resourceVersion": "367" });
                    if end < *objects {
                        metadata["continue"] = end.to_string().into();
                        metadata["remainingItemCount"] = (*objects - end).into();
                    }
                    let body = serde_json::json!({
                        "kind": "ConfigMapList", "apiVersion": "v1", "metadata": metadata, "items": items,
                    });
                    json(Bytes::from(serde_json::to_vec(&body).unwrap_or_default()))
                }
                _ => json(Bytes::from_static(
                    br#"{"kind":"List","apiVersion":"v1","metadata":{"resourceVersion":"367"},"items":[]}"#,
                )),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
