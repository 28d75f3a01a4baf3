//! The Action's release download (`scripts/install-prodigy.sh`), run for real against a local
//! HTTP server on 127.0.0.1 that serves a fake release: the asset for each runner OS and
//! architecture, checksum verification before anything is unpacked or run, the fallback to a
//! source build when no release matches, a pinned version and an explicit binary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-prodigy.sh");

/// The four runners a release serves: (`RUNNER_OS`, `RUNNER_ARCH`, Rust target).
const RUNNERS: [(&str, &str, &str); 4] = [
    ("Linux", "X64", "x86_64-unknown-linux-musl"),
    ("Linux", "ARM64", "aarch64-unknown-linux-musl"),
    ("macOS", "X64", "x86_64-apple-darwin"),
    ("macOS", "ARM64", "aarch64-apple-darwin"),
];

/// GitHub's release downloads of `octo/prodigy`, `<server>/octo/prodigy/releases/download/<tag>/<asset>`,
/// served from a directory, recording every path asked for.
struct FakeReleases {
    dir: tempfile::TempDir,
    server: String,
    requests: Arc<Mutex<Vec<String>>>,
}

const RELEASES: &str = "octo/prodigy/releases/download";

#[derive(Clone)]
struct Served {
    root: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn serve_file(State(s): State<Served>, UrlPath(path): UrlPath<String>) -> Response {
    s.requests.lock().unwrap().push(path.clone());
    if path.split('/').any(|part| part == ".." || part.is_empty()) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    match std::fs::read(s.root.join(&path)) {
        Ok(bytes) => bytes.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

impl FakeReleases {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/{*path}", get(serve_file))
            .with_state(Served {
                root: dir.path().to_path_buf(),
                requests: requests.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeReleases {
            dir,
            server: format!("http://{addr}"),
            requests,
        }
    }

    /// Publishes `prodigy-<tag>-<target>.tar.gz` (a `prodigy` that prints its target and notes
    /// each run in `$PRODIGY_FAKE_RAN`) and its `.sha256`, as release.yml lays them out.
    fn publish(&self, tag: &str, target: &str) -> PathBuf {
        let release = self.dir.path().join(RELEASES).join(tag);
        let name = format!("prodigy-{tag}-{target}");
        let stage = tempfile::tempdir().unwrap();
        let inner = stage.path().join(&name);
        std::fs::create_dir_all(&inner).unwrap();
        let bin = inner.join("prodigy");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\necho ran >> \"${{PRODIGY_FAKE_RAN:-/dev/null}}\"\necho \"prodigy {tag} {target}\"\n"
            ),
        )
        .unwrap();
        make_executable(&bin);
        std::fs::create_dir_all(&release).unwrap();
        let archive = release.join(format!("{name}.tar.gz"));
        let status = std::process::Command::new("tar")
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(stage.path())
            .arg(&name)
            .status()
            .unwrap();
        assert!(status.success(), "tar failed");
        let sum = hex::encode(Sha256::digest(std::fs::read(&archive).unwrap()));
        std::fs::write(
            release.join(format!("{name}.tar.gz.sha256")),
            format!("{sum}  {name}.tar.gz\n"),
        )
        .unwrap();
        archive
    }

    fn base(&self) -> String {
        format!("{}/{RELEASES}", self.server)
    }

    /// The paths asked for, relative to the release downloads.
    fn requests(&self) -> Vec<String> {
        let prefix = format!("{RELEASES}/");
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .map(|p| p.strip_prefix(&prefix).unwrap_or(p).to_string())
            .collect()
    }
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// One run of the script on a simulated runner.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    outputs: BTreeMap<String, String>,
    install_dir: PathBuf,
    ran_marker: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Run {
    fn out(&self, key: &str) -> Option<&str> {
        self.outputs.get(key).map(String::as_str)
    }
}

/// The action's own source as the script sees it: a Cargo.toml naming `crate_version`.
fn action_source(crate_version: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Cargo.toml"),
        format!("[package]\nname = \"prodigy\"\nversion = \"{crate_version}\"\n"),
    )
    .unwrap();
    dir
}

async fn run_script(
    releases: &FakeReleases,
    action: &Path,
    runner: (&str, &str),
    env: &[(&str, &str)],
) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let output_file = tmp.path().join("github_output");
    std::fs::write(&output_file, "").unwrap();
    let install_dir = tmp.path().join("tool-cache/prodigy");
    let ran_marker = tmp.path().join("ran");
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(SCRIPT)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("HOME", tmp.path())
        .env("RUNNER_OS", runner.0)
        .env("RUNNER_ARCH", runner.1)
        .env("GITHUB_OUTPUT", &output_file)
        .env("PRODIGY_RELEASE_BASE_URL", releases.base())
        .env("PRODIGY_INSTALL_DIR", &install_dir)
        .env("PRODIGY_ACTION_PATH", action)
        .env("PRODIGY_FAKE_RAN", &ran_marker);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    let outputs = std::fs::read_to_string(&output_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        outputs,
        install_dir,
        ran_marker,
        _tmp: tmp,
    }
}

#[tokio::test]
async fn each_runner_gets_the_asset_for_its_os_and_architecture() {
    let releases = FakeReleases::start().await;
    for (_, _, target) in RUNNERS {
        releases.publish("v1.2.3", target);
    }
    let action = action_source("1.2.3");
    for (os, arch, target) in RUNNERS {
        let before = releases.requests().len();
        let run = run_script(
            &releases,
            action.path(),
            (os, arch),
            &[("PRODIGY_ACTION_REF", "v1.2.3")],
        )
        .await;
        assert_eq!(
            run.code,
            Some(0),
            "{os}/{arch}: {}{}",
            run.stdout,
            run.stderr
        );
        assert_eq!(run.out("fallback"), Some("false"), "{os}/{arch}");
        assert_eq!(run.out("version"), Some("v1.2.3"));
        let bin = run.out("bin").expect("bin output");
        assert_eq!(Path::new(bin), run.install_dir.join("prodigy"));
        let printed = std::process::Command::new(bin).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&printed.stdout).trim(),
            format!("prodigy v1.2.3 {target}"),
            "{os}/{arch} installed another target's binary"
        );
        let asset = format!("v1.2.3/prodigy-v1.2.3-{target}.tar.gz");
        assert_eq!(
            releases.requests()[before..],
            [asset.clone(), format!("{asset}.sha256")],
            "{os}/{arch}"
        );
        assert!(run.stdout.contains("verified SHA-256"), "{}", run.stdout);
    }
}

#[tokio::test]
async fn a_major_tag_downloads_the_release_its_commit_names() {
    let releases = FakeReleases::start().await;
    releases.publish("v1.4.0", "x86_64-unknown-linux-musl");
    let action = action_source("1.4.0");
    let run = run_script(
        &releases,
        action.path(),
        ("Linux", "X64"),
        &[("PRODIGY_ACTION_REF", "v1")],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.out("version"), Some("v1.4.0"));
    assert_eq!(
        releases.requests()[0],
        "v1.4.0/prodigy-v1.4.0-x86_64-unknown-linux-musl.tar.gz"
    );

    // A `v2` ref whose source says 1.4.0 is no v2 release: build instead of guessing.
    let run = run_script(
        &releases,
        action.path(),
        ("Linux", "X64"),
        &[("PRODIGY_ACTION_REF", "v2")],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.out("fallback"), Some("true"));
    assert!(run.stdout.contains("not a v2 release"), "{}", run.stdout);
}

/// Inside a composite action the runner may leave `github.action_ref` and
/// `github.action_repository` empty; the action's checkout path names both.
#[tokio::test]
async fn the_ref_and_repository_come_from_the_action_path_when_the_runner_leaves_them_empty() {
    let releases = FakeReleases::start().await;
    releases.publish("v1.4.0", "aarch64-unknown-linux-musl");
    let work = tempfile::tempdir().unwrap();
    let action = work.path().join("_actions/octo/prodigy/v1");
    std::fs::create_dir_all(&action).unwrap();
    std::fs::write(
        action.join("Cargo.toml"),
        "[package]\nname = \"prodigy\"\nversion = \"1.4.0\"\n",
    )
    .unwrap();
    let run = run_script(
        &releases,
        &action,
        ("Linux", "ARM64"),
        &[
            ("PRODIGY_ACTION_REF", ""),
            ("PRODIGY_ACTION_REPOSITORY", ""),
            // The default address: GitHub's release downloads of the action's repository.
            ("PRODIGY_RELEASE_BASE_URL", ""),
            ("GITHUB_SERVER_URL", &releases.server),
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.out("version"), Some("v1.4.0"));
    assert_eq!(
        releases.requests()[0],
        "v1.4.0/prodigy-v1.4.0-aarch64-unknown-linux-musl.tar.gz"
    );
}

#[tokio::test]
async fn a_pinned_version_wins_over_the_ref() {
    let releases = FakeReleases::start().await;
    releases.publish("v1.0.0", "aarch64-apple-darwin");
    releases.publish("v1.2.3", "aarch64-apple-darwin");
    let action = action_source("1.2.3");
    for pinned in ["1.0.0", "v1.0.0"] {
        let run = run_script(
            &releases,
            action.path(),
            ("macOS", "ARM64"),
            &[
                ("PRODIGY_ACTION_REF", "v1.2.3"),
                ("PRODIGY_VERSION", pinned),
            ],
        )
        .await;
        assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
        assert_eq!(run.out("version"), Some("v1.0.0"), "{pinned}");
        let printed = std::process::Command::new(run.out("bin").unwrap())
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&printed.stdout)
                .contains("prodigy v1.0.0 aarch64-apple-darwin")
        );
    }
    assert!(releases.requests().iter().all(|p| p.starts_with("v1.0.0/")));
}

#[tokio::test]
async fn a_wrong_checksum_is_refused_and_nothing_is_extracted_or_run() {
    let releases = FakeReleases::start().await;
    let archive = releases.publish("v1.2.3", "x86_64-unknown-linux-musl");
    // The archive changes after its checksum was published (a corrupt or replaced download).
    let mut bytes = std::fs::read(&archive).unwrap();
    bytes.extend_from_slice(b"tampered");
    std::fs::write(&archive, &bytes).unwrap();
    let actual = hex::encode(Sha256::digest(&bytes));
    let action = action_source("1.2.3");

    let run = run_script(
        &releases,
        action.path(),
        ("Linux", "X64"),
        &[("PRODIGY_ACTION_REF", "v1.2.3")],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(
            "checksum mismatch for prodigy-v1.2.3-x86_64-unknown-linux-musl.tar.gz of release v1.2.3"
        ) && run.stderr.contains(&format!("got {actual}"))
            && run.stderr.contains("nothing was extracted or run"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains("::error title=prodigy install::checksum mismatch")
    );
    assert!(!run.install_dir.exists(), "something was installed");
    assert!(!run.ran_marker.exists(), "the unverified binary ran");
    assert_eq!(run.out("bin"), None);
    assert_eq!(
        run.out("fallback"),
        None,
        "a bad checksum is no reason to build"
    );
}

#[tokio::test]
async fn an_asset_without_a_usable_checksum_is_refused() {
    let releases = FakeReleases::start().await;
    let archive = releases.publish("v1.2.3", "x86_64-apple-darwin");
    let sum_file = PathBuf::from(format!("{}.sha256", archive.display()));
    let action = action_source("1.2.3");
    let env = [("PRODIGY_ACTION_REF", "v1.2.3")];

    std::fs::write(&sum_file, "not a checksum\n").unwrap();
    let run = run_script(&releases, action.path(), ("macOS", "X64"), &env).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("holds no SHA-256"), "{}", run.stderr);
    assert!(!run.install_dir.exists() && !run.ran_marker.exists());

    std::fs::remove_file(&sum_file).unwrap();
    let run = run_script(&releases, action.path(), ("macOS", "X64"), &env).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("could not be fetched (HTTP 404)")
            && run.stderr.contains("refusing to run an unverified binary"),
        "{}",
        run.stderr
    );
    assert!(!run.install_dir.exists() && !run.ran_marker.exists());
}

#[tokio::test]
async fn no_matching_release_falls_back_to_a_source_build() {
    let releases = FakeReleases::start().await;
    releases.publish("v1.2.3", "x86_64-unknown-linux-musl");
    let action = action_source("1.2.3");

    // The release exists, but not for this runner.
    let run = run_script(
        &releases,
        action.path(),
        ("Linux", "ARM64"),
        &[("PRODIGY_ACTION_REF", "v1.2.3")],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.out("fallback"), Some("true"));
    assert_eq!(run.out("bin"), None);
    let key = run
        .out("cache-key")
        .expect("a cache key for the source build");
    assert!(
        key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit()),
        "{key}"
    );
    assert!(
        run.stdout.contains(
            "release v1.2.3 has no asset prodigy-v1.2.3-aarch64-unknown-linux-musl.tar.gz"
        ),
        "{}",
        run.stdout
    );

    // A version that was never released.
    let run = run_script(
        &releases,
        action.path(),
        ("Linux", "X64"),
        &[("PRODIGY_VERSION", "v9.9.9")],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.out("fallback"), Some("true"));

    // A branch or commit ref has no release: the server is not even asked.
    let asked = releases.requests().len();
    for runner in [("Linux", "X64"), ("Windows", "X64")] {
        let run = run_script(
            &releases,
            action.path(),
            runner,
            &[("PRODIGY_ACTION_REF", "main")],
        )
        .await;
        assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
        assert_eq!(run.out("fallback"), Some("true"));
    }
    assert_eq!(releases.requests().len(), asked);

    // The cache key follows the sources a build compiles.
    let changed = action_source("1.2.4");
    let run2 = run_script(
        &releases,
        changed.path(),
        ("Linux", "X64"),
        &[("PRODIGY_ACTION_REF", "main")],
    )
    .await;
    assert_ne!(run2.out("cache-key"), Some(key));
}

#[tokio::test]
async fn an_explicit_binary_is_used_and_nothing_is_downloaded() {
    let releases = FakeReleases::start().await;
    releases.publish("v1.2.3", "x86_64-unknown-linux-musl");
    let action = action_source("1.2.3");
    let own = tempfile::tempdir().unwrap();
    let bin = own.path().join("my-prodigy");
    std::fs::write(&bin, "#!/bin/sh\necho mine\n").unwrap();
    make_executable(&bin);

    let run = run_script(
        &releases,
        action.path(),
        ("Linux", "X64"),
        &[
            ("PRODIGY_ACTION_REF", "v1.2.3"),
            ("PRODIGY_BINARY", bin.to_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.out("bin"), Some(bin.to_str().unwrap()));
    assert_eq!(run.out("fallback"), Some("false"));
    assert_eq!(releases.requests(), Vec::<String>::new());

    let missing = own.path().join("nope");
    let run = run_script(
        &releases,
        action.path(),
        ("Linux", "X64"),
        &[("PRODIGY_BINARY", missing.to_str().unwrap())],
    )
    .await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains(&format!(
            "the binary input names {}, which does not exist",
            missing.display()
        )),
        "{}",
        run.stderr
    );
}
