//! The Action's step harness: the real `prodigy action` with the runner's variables pointing
//! at the fake GitHub, event files made from GitHub's payload examples, a real git repository
//! and the runner's output and summary files (`tests/action.rs`, `tests/action_comments.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};

use super::fake_github::FakeGitHub;
use super::repo::{Repo, text};
use super::webhook::fixture_payload;

pub const REPO: &str = "octo-org/pipelines";
/// The App installation the fake starts with; the Action never uses it.
pub const INSTALLATION: u64 = 31;
/// GITHUB_SHA of a `pull_request` run: the merge commit GitHub made, not the PR's head.
pub const MERGE_SHA: &str = "4a7c0ffee00000000000000000000000000000d1";
pub const WORKFLOW_FILE: &str = ".prodigy/review.yml";

/// Items whose id is in `$FLAGS/fail-<id>` fail with exit code 3; the others commit a file.
/// `continue_on_failure: false` with one agent at a time stops the map phase at a failure.
pub fn workflow(stop_on_failure: bool) -> String {
    let policy = if stop_on_failure {
        "error_policy:\n  continue_on_failure: false\n"
    } else {
        ""
    };
    format!(
        r#"name: review
mode: mapreduce
{policy}map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 1
  agent_template:
    - shell: |
        if [ -f "$FLAGS/fail-${{item.id}}" ]; then echo "review: ${{item.id}} has 2 problems" >&2; exit 3; fi
        echo "${{item.id}}" > "out-${{item.id}}.txt" && git add . && git commit -q -m "item ${{item.id}}"
"#
    )
}

pub const ITEMS: &str = r#"[
  {"id": "alpha"},
  {"id": "beta", "file": "src/beta.rs", "line": 4},
  {"id": "gamma"}
]"#;

/// The runner's variables a test may leave out; removed so the test's own environment (say,
/// a real GitHub Actions job) never leaks in.
pub const RUNNER_VARS: &[&str] = &[
    "GITHUB_EVENT_PATH",
    "GITHUB_EVENT_NAME",
    "GITHUB_REPOSITORY",
    "GITHUB_SHA",
    "GITHUB_WORKSPACE",
    "GITHUB_API_URL",
    "GITHUB_SERVER_URL",
    "GITHUB_RUN_ID",
    "GITHUB_TOKEN",
    "GITHUB_OUTPUT",
    "GITHUB_STEP_SUMMARY",
    "PRODIGY_RESUME",
    "PRODIGY_WORKFLOW",
    "PRODIGY_MAX_PARALLEL",
    "GITHUB_RUN_ATTEMPT",
    "PRODIGY_TRIGGER",
    "PRODIGY_RETRY",
];

pub struct Step {
    pub fake: FakeGitHub,
    pub repo: Repo,
    /// The pull request's head commit: the repository's HEAD.
    pub head: String,
    pub token: String,
    pub flags: tempfile::TempDir,
    pub runner: tempfile::TempDir,
}

/// What one run of the step left.
pub struct Ran {
    pub out: Output,
    pub outputs: BTreeMap<String, String>,
    pub summary: String,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    pub fn output(&self, name: &str) -> &str {
        self.outputs.get(name).unwrap_or_else(|| {
            panic!(
                "no output `{name}`: {:?}\n{}",
                self.outputs,
                text(&self.out)
            )
        })
    }
}

impl Step {
    pub async fn new(db_url: Option<&str>, stop_on_failure: bool, checks_write: bool) -> Step {
        Step::with_workflow(db_url, &workflow(stop_on_failure), checks_write).await
    }

    pub async fn with_workflow(db_url: Option<&str>, workflow: &str, checks_write: bool) -> Step {
        let fake = FakeGitHub::start(INSTALLATION, &[REPO]).await;
        let token = fake.issue_workflow_token(REPO, checks_write);
        let repo = Repo::new(db_url);
        repo.write(WORKFLOW_FILE, workflow);
        repo.write("items.json", ITEMS);
        repo.commit_all("review workflow");
        let head = repo.git(&["rev-parse", "HEAD"]);
        let step = Step {
            fake,
            repo,
            head,
            token,
            flags: tempfile::tempdir().unwrap(),
            runner: tempfile::tempdir().unwrap(),
        };
        std::fs::write(step.event_path(), step.event()).unwrap();
        step
    }

    pub fn event_path(&self) -> PathBuf {
        self.runner.path().join("event.json")
    }

    /// GitHub's `pull_request.opened` example, about our repository and its HEAD.
    pub fn event(&self) -> Vec<u8> {
        let mut v: Value =
            serde_json::from_slice(&fixture_payload("pull_request/opened.payload.json")).unwrap();
        v["pull_request"]["head"]["sha"] = json!(self.head);
        v["pull_request"]["head"]["repo"]["full_name"] = json!(REPO);
        v["pull_request"]["base"]["repo"]["full_name"] = json!(REPO);
        v["repository"]["full_name"] = json!(REPO);
        serde_json::to_vec(&v).unwrap()
    }

    pub fn fail(&self, id: &str) {
        std::fs::write(self.flags.path().join(format!("fail-{id}")), "").unwrap();
    }

    pub fn unfail(&self, id: &str) {
        std::fs::remove_file(self.flags.path().join(format!("fail-{id}"))).unwrap();
    }

    /// The runner's variables for a `pull_request` run in `workspace`.
    pub fn vars(&self, workspace: &Path) -> Vec<(&'static str, String)> {
        vec![
            ("GITHUB_EVENT_PATH", self.event_path().display().to_string()),
            ("GITHUB_EVENT_NAME", "pull_request".into()),
            ("GITHUB_REPOSITORY", REPO.into()),
            ("GITHUB_SHA", MERGE_SHA.into()),
            ("GITHUB_WORKSPACE", workspace.display().to_string()),
            ("GITHUB_API_URL", self.fake.base_url()),
            ("GITHUB_SERVER_URL", "https://github.example".into()),
            ("GITHUB_RUN_ID", "4242".into()),
            ("GITHUB_TOKEN", self.token.clone()),
        ]
    }

    /// Runs `prodigy action` in the repository with its variables, `extra` overriding them
    /// (an empty value removes one).
    pub async fn run(&self, extra: &[(&str, &str)]) -> Ran {
        self.run_in(&self.repo.path, extra).await
    }

    pub async fn run_in(&self, workspace: &Path, extra: &[(&str, &str)]) -> Ran {
        let started = self.start_in(workspace, extra);
        let Started {
            child,
            output_file,
            summary_file,
        } = started;
        // The fake answers on this test's runtime while the step runs.
        let out =
            tokio::task::spawn_blocking(move || child.wait_with_output().expect("prodigy runs"))
                .await
                .unwrap();
        Started::ran(out, &output_file, &summary_file)
    }

    /// Starts `prodigy action` without waiting for it (stdout and stderr piped).
    pub fn start(&self, extra: &[(&str, &str)]) -> Started {
        self.start_in(&self.repo.path, extra)
    }

    pub fn start_in(&self, workspace: &Path, extra: &[(&str, &str)]) -> Started {
        let output_file = self
            .runner
            .path()
            .join(format!("output-{}", uuid::Uuid::now_v7()));
        let summary_file = self
            .runner
            .path()
            .join(format!("summary-{}", uuid::Uuid::now_v7()));
        let mut cmd = self.repo.command(&["action", WORKFLOW_FILE]);
        // Agents of the Action get a built environment: FLAGS reaches them because it is passed.
        cmd.current_dir(workspace)
            .env("FLAGS", self.flags.path())
            .env("PRODIGY_PASS_ENV", "FLAGS");
        for var in RUNNER_VARS {
            cmd.env_remove(var);
        }
        let mut vars = self.vars(workspace);
        vars.push(("GITHUB_OUTPUT", output_file.display().to_string()));
        vars.push(("GITHUB_STEP_SUMMARY", summary_file.display().to_string()));
        for (k, v) in extra {
            vars.retain(|(name, _)| name != k);
            if !v.is_empty() {
                vars.push((k, v.to_string()));
            }
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        Started {
            child: cmd.spawn().expect("prodigy starts"),
            output_file,
            summary_file,
        }
    }

    /// A bare repository standing in for GitHub's copy, as `origin` of the checkout, with
    /// `main` pushed (credentials aside, what `actions/checkout` leaves).
    pub fn add_origin(&self) -> PathBuf {
        let origin = self.runner.path().join("origin.git");
        super::git::git(
            self.runner.path(),
            &["init", "-q", "--bare", origin.to_str().unwrap()],
        );
        super::git::git(&origin, &["symbolic-ref", "HEAD", "refs/heads/main"]);
        self.repo
            .git(&["remote", "add", "origin", origin.to_str().unwrap()]);
        self.repo
            .git(&["push", "-q", "origin", "HEAD:refs/heads/main"]);
        origin
    }

    /// An `issue_comment.created` event from GitHub's example, made a comment on pull request
    /// `pr` of our repository by `user` with `association`, written to a new file.
    pub fn comment_event(&self, body: &str, user: &str, association: &str, pr: u64) -> PathBuf {
        let mut v: Value = serde_json::from_slice(&fixture_payload(
            "issue_comment/created.with-installation.payload.json",
        ))
        .unwrap();
        v["issue"]["number"] = json!(pr);
        // What GitHub adds to an issue that is a pull request.
        v["issue"]["pull_request"] = json!({
            "url": format!("https://api.github.com/repos/{REPO}/pulls/{pr}"),
            "html_url": format!("https://github.com/{REPO}/pull/{pr}"),
        });
        v["comment"]["body"] = json!(body);
        v["comment"]["user"]["login"] = json!(user);
        v["comment"]["user"]["type"] = json!("User");
        v["comment"]["author_association"] = json!(association);
        v["repository"]["full_name"] = json!(REPO);
        let path = self
            .runner
            .path()
            .join(format!("comment-{}.json", uuid::Uuid::now_v7()));
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        path
    }

    pub fn check_runs_on_head(&self) -> Vec<super::fake_github::CheckRun> {
        self.fake.check_runs_for(REPO, &self.head)
    }
}

/// `$GITHUB_OUTPUT` in the runner's multiline form (`name<<DELIM` ... `DELIM`); each name once.
pub fn parse_outputs(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let (name, delimiter) = line
            .split_once("<<")
            .unwrap_or_else(|| panic!("not a multiline output line: {line:?} in\n{text}"));
        let mut value = Vec::new();
        for l in lines.by_ref() {
            if l == delimiter {
                break;
            }
            value.push(l);
        }
        let previous = out.insert(name.to_string(), value.join("\n"));
        assert!(previous.is_none(), "output `{name}` written twice:\n{text}");
    }
    out
}

/// A step started in the background.
pub struct Started {
    pub child: std::process::Child,
    output_file: PathBuf,
    summary_file: PathBuf,
}

impl Started {
    fn ran(out: Output, output_file: &Path, summary_file: &Path) -> Ran {
        let outputs = std::fs::read_to_string(output_file)
            .map(|t| parse_outputs(&t))
            .unwrap_or_default();
        let summary = std::fs::read_to_string(summary_file).unwrap_or_default();
        Ran {
            out,
            outputs,
            summary,
        }
    }

    /// Waits for the step to end.
    pub async fn wait(self) -> Ran {
        let Started {
            child,
            output_file,
            summary_file,
        } = self;
        let out =
            tokio::task::spawn_blocking(move || child.wait_with_output().expect("prodigy runs"))
                .await
                .unwrap();
        Started::ran(out, &output_file, &summary_file)
    }

    /// Whether it has ended, without waiting.
    pub fn has_ended(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// SIGKILL, as when the runner's step is killed.
    pub fn kill9(mut self) {
        // SAFETY: kill(2) with a pid we own; the worst outcome is ESRCH.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
