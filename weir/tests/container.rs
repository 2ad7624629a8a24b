//! The container image and the Compose stack, checked here with Podman and Debian's
//! docker-compose (`deploy/dev test` builds the image `WEIR_CONTAINER_IMAGE` from
//! `deploy/Dockerfile`'s runtime stage, with the host's release binary on a local Debian
//! base):
//!
//! - the image runs `weir` as a non-root user, with its labels and a health check on
//!   `/healthz`; started with host networking against the dev broker and PostgreSQL, it
//!   processes records end to end (clean topic, dead-letter topic, rows) and is healthy;
//! - `deploy/compose.yaml` passes `docker-compose config` (the Compose schema), refuses to
//!   start without its secrets, pins every image and gives every long-running service a
//!   health check that what depends on it waits for.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::kafka::read_all;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::Value;

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman (deploy/dev test installs it)")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A container removed when the guard drops.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "5", &self.0]);
    }
}

#[test]
fn the_image_runs_as_non_root_and_processes_records_end_to_end() {
    let image = common::env("WEIR_CONTAINER_IMAGE");
    let inspect: Value = serde_json::from_str(&ok(podman(&["image", "inspect", &image]))).unwrap();
    let config = &inspect[0]["Config"];
    assert_eq!(config["User"], "10001:10001", "{config}");
    assert_eq!(config["Entrypoint"], serde_json::json!(["weir"]));
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["run", "topology/users.toml"])
    );
    let labels = &config["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert!(labels["org.opencontainers.image.source"].is_string());
    // Podman shows a Docker-format image's health check at the top of its inspection
    let health = inspect[0]["Healthcheck"]["Test"].to_string();
    assert!(health.contains("/healthz"), "no health check: {health}");
    let size = inspect[0]["Size"].as_f64().unwrap_or(0.0);
    eprintln!("image {image}: {:.0} MB", size / 1e6);
    // who the process is
    // (no network: a machine with Podman but without its network plugins runs these too)
    let id = ok(podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "id",
        &image,
        "-u",
    ]));
    assert_eq!(id.trim(), "10001", "runs as root");
    let version = ok(podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        &image,
        "--version",
    ]));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    // `weir run` in the image, on this test's topics and database, with host networking
    let t = common::weir::Topics::create("weir-image", 2);
    let url = common::pg::fresh_database_now("weir_image");
    let port = common::free_port();
    let name = common::unique("weir-image");
    let env = [
        ("WEIR_TOPIC_RAW", t.raw.as_str()),
        ("WEIR_TOPIC_CLEAN", t.clean.as_str()),
        ("WEIR_TOPIC_DLQ", t.dlq.as_str()),
        ("WEIR_APPLICATION_ID", t.app.as_str()),
        ("WEIR_DATABASE_URL", url.as_str()),
        ("WEIR_HTTP_HOST", "127.0.0.1"),
    ];
    let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", "host"]
        .map(String::from)
        .to_vec();
    for (k, v) in env {
        args.push("-e".into());
        args.push(format!("{k}={v}"));
    }
    args.push("-e".into());
    args.push(format!("WEIR_KAFKA_BOOTSTRAP={}", common::bootstrap()));
    args.push("-e".into());
    args.push(format!("WEIR_HTTP_PORT={port}"));
    args.push(image.clone());
    ok(podman(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let container = Container(name.clone());

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .create()
        .unwrap();
    let mut bad = 0;
    for i in 0..40 {
        let (value, reason) = common::users::raw_record(i);
        bad += reason.is_some() as usize;
        producer
            .send(BaseRecord::to(&t.raw).key(&format!("k{i}")).payload(&value))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let api = common::api::Http::local(port);
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut clean, mut dead, mut rows) = (0, 0, 0);
    loop {
        let running = ok(podman(&["inspect", "-f", "{{.State.Running}}", &name]));
        assert_eq!(
            running.trim(),
            "true",
            "the container stopped: {}",
            ok(podman(&["logs", &name]))
        );
        if clean == 0 || dead == 0 || rows < clean {
            clean = read_all(&t.clean, 2, "read_committed").len();
            dead = read_all(&t.dlq, 2, "read_committed").len();
            if let Ok(mut r) = ureq::get(&format!("{}/api/windows", api.base)).call() {
                let w: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap())
                    .unwrap_or_default();
                rows = w["windows"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|w| w["rows_written"].as_i64().unwrap_or(0) as usize)
                    .sum();
            }
        }
        if clean + dead == 40 && rows == clean {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 90 s: {clean} clean, {dead} dead letters, {rows} rows of 40 records; logs:\n{}",
            ok(podman(&["logs", &name]))
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(dead, bad);
    let (status, _) = api.call("GET", "/healthz", None);
    assert_eq!(status, 200);
    // the image's own health check, run by Podman inside the container
    let health = podman(&["healthcheck", "run", &name]);
    assert!(
        health.status.success(),
        "unhealthy: {}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    // a clean stop: SIGTERM commits and exits 0
    ok(podman(&["stop", "-t", "30", &name]));
    let code = ok(podman(&["inspect", "-f", "{{.State.ExitCode}}", &name]));
    assert_eq!(code.trim(), "0", "{}", ok(podman(&["logs", &name])));
    drop(container);
}

/// `deploy/compose.yaml` as JSON (PyYAML, which docker-compose depends on).
fn compose_file() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose.yaml");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    serde_json::from_str(&ok(out)).unwrap()
}

#[test]
fn the_compose_file_is_valid_pinned_and_checks_every_service_health() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    // a Compose implementation reads it: with the example's secrets filled in ...
    let dir = common::scratch_dir("weir-compose");
    let env_file = dir.join("compose.env");
    let example = std::fs::read_to_string(deploy.join("compose.env.example")).unwrap();
    let filled: String = example
        .lines()
        .map(|l| match l.strip_suffix('=') {
            Some(key) if !l.starts_with('#') => format!("{key}=secret-{key}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&env_file, filled).unwrap();
    let config = |env_file: &Path| {
        Command::new("docker-compose")
            // only the file's values: `deploy/dev test` exports secrets of the same names
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(["--env-file", env_file.to_str().unwrap(), "-f"])
            .arg(deploy.join("compose.yaml"))
            .arg("config")
            .output()
            .expect("docker-compose (deploy/dev test installs it)")
    };
    let resolved = ok(config(&env_file));
    assert!(resolved.contains("secret-WEIR_ADMIN_TOKEN"), "{resolved}");
    // ... and without them it refuses, naming the missing one
    let empty = dir.join("empty.env");
    std::fs::write(&empty, "").unwrap();
    let refused = config(&empty);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("WEIR_PG_PASSWORD"), "{err}");

    let compose = compose_file();
    let services = compose["services"].as_object().unwrap();
    for name in [
        "kafka",
        "kafka-init",
        "postgres",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "weir",
        "ingest",
    ] {
        assert!(services.contains_key(name), "no service {name}");
    }
    for (name, s) in services {
        // every image pinned to a version: a tag with a digit, never latest
        let image = s["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no image"));
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            tag.chars().any(|c| c.is_ascii_digit()) && !tag.contains("latest"),
            "{name}: image {image} is not pinned"
        );
        // a job runs once; everything else runs on, with a health check
        let job = s["restart"] == "no";
        if !job {
            let test = s["healthcheck"]["test"].to_string();
            assert!(test.len() > 10, "{name}: no health check");
        }
        // what it waits for: healthy services, or jobs that completed
        if let Some(deps) = s["depends_on"].as_object() {
            for (dep, cond) in deps {
                let dep_is_job = services[dep]["restart"] == "no";
                let want = if dep_is_job {
                    "service_completed_successfully"
                } else {
                    "service_healthy"
                };
                assert_eq!(cond["condition"], want, "{name} → {dep}");
            }
        }
    }
    // the official images for users; Weir's own built from deploy/Dockerfile
    assert!(services["kafka"]["image"]
        .as_str()
        .unwrap()
        .starts_with("docker.io/apache/kafka:4."));
    assert!(services["postgres"]["image"]
        .as_str()
        .unwrap()
        .starts_with("docker.io/library/postgres:"));
    assert_eq!(services["weir"]["build"]["dockerfile"], "deploy/Dockerfile");
    // the README's ports
    for (service, port) in [
        ("kafka", "9092:9092"),
        ("postgres", "5433:5432"),
        ("airflow-apiserver", "8080:8080"),
        ("weir", "5000:5000"),
    ] {
        assert!(
            services[service]["ports"].to_string().contains(port),
            "{service}: {}",
            services[service]["ports"]
        );
    }
    // named volumes for the data
    for v in ["kafka-data", "pg-data"] {
        assert!(compose["volumes"].get(v).is_some(), "no volume {v}");
    }
    // the secrets' real file is git-ignored; only the example is committed
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.gitignore"))
            .unwrap();
    assert!(ignore.lines().any(|l| l == "/deploy/.env"), "{ignore}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The Dockerfile's build stage compiles what its context holds: every file the workspace's
/// sources include at compile time (`include_str!`, `include_bytes!`) is in the allowlist of
/// `deploy/Dockerfile.dockerignore`. (Checked by hand once: that context alone passes
/// `cargo check --offline --locked -p weir`.)
#[test]
fn the_build_context_holds_every_file_the_sources_include() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ignore = std::fs::read_to_string(root.join("deploy/Dockerfile.dockerignore")).unwrap();
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(allowed.contains(&"Cargo.lock") && allowed.contains(&"weir"));
    let mut checked = 0;
    let mut dirs = vec![
        root.join("topology/src"),
        root.join("processors/src"),
        root.join("sinks/src"),
        root.join("web/src"),
        root.join("weir/src"),
    ];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for marker in ["include_str!(\"", "include_bytes!(\""] {
                for (at, _) in text.match_indices(marker) {
                    let rest = &text[at + marker.len()..];
                    let rel = &rest[..rest.find('"').unwrap()];
                    let included = path.parent().unwrap().join(rel).canonicalize().unwrap();
                    let inside = included
                        .strip_prefix(root.canonicalize().unwrap())
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    assert!(
                        allowed
                            .iter()
                            .any(|a| inside == *a || inside.starts_with(&format!("{a}/"))),
                        "{} includes {inside}, which deploy/Dockerfile.dockerignore leaves out of the build context",
                        path.display()
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 4, "{checked} includes found");
}
