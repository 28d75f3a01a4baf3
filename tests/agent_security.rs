//! Agents never see prodigy's secrets, through the real `prodigy run` binary: an agent dumps its
//! environment and prodigy's `/proc/<pid>/environ` (prodigy is its shell's parent), lists the directories around its worktree,
//! writes outside it and tries the key file and the state database. Nothing secret reaches
//! anything it could save (its commits, its log, the events), the reads and writes fail in the
//! sandbox, and the job reports that agent's failure as any other.
//!
//! Also: `--sandbox off` warns, `auto` without Landlock warns once, `required` without Landlock
//! fails before any agent runs, naming why (Landlock's absence is simulated with
//! `PRODIGY_SANDBOX_SIMULATE_MISSING=1`).

mod support;

use std::path::Path;

use prodigy::engine::sandbox::{Support, support};
use support::repo::{Repo, job_id, text};

const SECRETS: &[(&str, &str)] = &[
    ("PRODIGY_WEBHOOK_SECRET", "run-face-webhook-secret-1"),
    ("PRODIGY_PRIVATE_KEY", "run-face-private-key-2"),
    ("PGPASSWORD", "run-face-pg-password-3"),
];

const WORKFLOW: &str = r#"name: probe
mode: mapreduce
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 1
  agent_template:
    - shell: "PRODIGY_PID=$PPID sh agent-${item.id}.sh"
"#;

/// Saves everything it can find into its worktree and commits it.
const PROBE: &str = r#"env > env.txt
{ cat /proc/$PRODIGY_PID/environ 2>&1 || echo "environ: not readable"; } | tr '\0' '\n' > proc.txt
{ ls "$(dirname "$PWD")" 2>&1 || echo "parent: not listable"; } > parent.txt
{ ls "$STATE_HOME" 2>&1 || echo "state: not listable"; } > state.txt
{ touch "$OUTSIDE/escaped" 2>&1 || echo "outside: not writable"; } > outside.txt
echo "tmp works" > "$TMPDIR/scratch" && cat "$TMPDIR/scratch" > tmp.txt
git add -A && git commit -q -m "evidence"
"#;

/// Goes for the key file and the database, and fails.
const THIEF: &str = r#"cat "$KEY_FILE"
cat "$STATE_DB" > stolen.db
exit 9
"#;

fn sandboxed() -> bool {
    matches!(support(), Support::Available { .. })
}

fn repo_with_agents() -> Repo {
    let repo = Repo::new(None);
    repo.write("wf.yml", WORKFLOW);
    repo.write("items.json", r#"[{"id": "probe"}, {"id": "thief"}]"#);
    repo.write("agent-probe.sh", PROBE);
    repo.write("agent-thief.sh", THIEF);
    repo.commit_all("agents");
    repo
}

/// Every file under `dir`, as text.
fn all_text(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.push_str(&all_text(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

#[test]
fn run_face_agents_see_no_secret_and_cannot_leave_their_worktree() {
    let repo = repo_with_agents();
    let outside = tempfile::tempdir().unwrap();
    let key = repo.home.join("app-key.pem");
    std::fs::write(&key, "-----BEGIN KEY----- run-face-key-file-4").unwrap();
    let mut cmd = repo.command(&["run", "wf.yml"]);
    cmd.envs(SECRETS.iter().copied())
        .env("KEY_FILE", &key)
        .env("STATE_DB", repo.home.join("state.db"))
        .env("STATE_HOME", &repo.home)
        .env("OUTSIDE", outside.path());
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let job = job_id(&out);
    let branch = format!("prodigy/{job}");

    // The probe's evidence, as it committed it.
    let env = repo.show(&format!("{branch}:env.txt"));
    assert!(env.contains("TMPDIR=/"), "{env}");
    assert!(!env.contains("DATABASE_URL="), "{env}");
    let proc = repo.show(&format!("{branch}:proc.txt"));
    assert!(proc.contains("environ: not readable"), "{proc}");
    assert_eq!(repo.show(&format!("{branch}:tmp.txt")), "tmp works");
    if sandboxed() {
        for (file, denial) in [
            ("parent.txt", "parent: not listable"),
            ("state.txt", "state: not listable"),
            ("outside.txt", "outside: not writable"),
        ] {
            let saved = repo.show(&format!("{branch}:{file}"));
            assert!(saved.contains(denial), "{file}: {saved}");
        }
        assert!(!outside.path().join("escaped").exists());
    }

    // The thief failed as an agent fails: in the DLQ, with its reason.
    let dlq = repo.json(&["dlq", "list", &job]);
    let rows = dlq.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{dlq:#}");
    let message = rows[0].to_string();
    assert!(message.contains("exit code 9"), "{message}");
    if sandboxed() {
        assert!(message.contains("Permission denied"), "{message}");
    }

    // No secret in anything an agent could save or prodigy reports.
    let events = repo.prodigy(&["events", &job, "--json"]);
    let mut everything = format!(
        "{}\n{}\n{}",
        text(&out),
        String::from_utf8_lossy(&events.stdout),
        all_text(&repo.home.join("logs"))
    );
    everything.push_str(&repo.git(&["log", "-p", &branch]));
    for (name, value) in SECRETS
        .iter()
        .copied()
        .chain([("key file", "run-face-key-file-4")])
    {
        assert!(!everything.contains(value), "{name} leaked:\n{everything}");
    }
}

#[test]
fn sandbox_off_warns_and_required_without_landlock_fails_before_any_agent() {
    let repo = Repo::new(None);
    repo.write(
        "wf.yml",
        "name: escape\ncommands:\n  - shell: 'touch \"$OUTSIDE/$MARK\"'\n",
    );
    repo.commit_all("wf");
    let outside = tempfile::tempdir().unwrap();
    let run = |mark: &str, env: &[(&str, &str)]| {
        let mut cmd = repo.command(&["run", "wf.yml"]);
        cmd.env("OUTSIDE", outside.path()).env("MARK", mark);
        cmd.envs(env.iter().copied());
        cmd.output().unwrap()
    };

    let off = run("off", &[("PRODIGY_SANDBOX", "off")]);
    assert!(off.status.success(), "{}", text(&off));
    let stderr = String::from_utf8_lossy(&off.stderr);
    assert_eq!(
        stderr.matches("the agent sandbox is off").count(),
        1,
        "{stderr}"
    );
    assert!(outside.path().join("off").exists(), "off means unconfined");

    let missing = run("auto", &[("PRODIGY_SANDBOX_SIMULATE_MISSING", "1")]);
    assert!(missing.status.success(), "{}", text(&missing));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(
        stderr.matches("agents run without a sandbox").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("PRODIGY_SANDBOX_SIMULATE_MISSING=1"),
        "{stderr}"
    );

    let required = run(
        "required",
        &[
            ("PRODIGY_SANDBOX_SIMULATE_MISSING", "1"),
            ("PRODIGY_SANDBOX", "required"),
        ],
    );
    assert_eq!(required.status.code(), Some(1), "{}", text(&required));
    let all = text(&required);
    assert!(
        all.contains("the agent sandbox is required") && all.contains("treated as missing"),
        "{all}"
    );
    assert!(!outside.path().join("required").exists(), "no agent ran");

    if sandboxed() {
        let confined = run("auto-real", &[]);
        assert_eq!(confined.status.code(), Some(1), "{}", text(&confined));
        assert!(!outside.path().join("auto-real").exists());
    }
}

/// An agent points its worktree's `.git` at a git directory of its own whose configuration runs
/// a command (`core.fsmonitor`): prodigy's own git, which runs unsandboxed, must never use it.
#[test]
fn an_agent_cannot_hand_prodigys_git_a_configuration_of_its_own() {
    let repo = Repo::new(None);
    repo.write(
        "wf.yml",
        r#"name: hijack
mode: mapreduce
map:
  input: items.json
  json_path: "$[*]"
  agent_template:
    - shell: "sh hijack.sh"
"#,
    );
    repo.write("items.json", r#"[{"id": "one"}]"#);
    repo.write(
        "hijack.sh",
        r#"git clone -q --bare "$(git rev-parse --git-common-dir)" "$PWD/.evil"
git --git-dir="$PWD/.evil" update-ref --no-deref HEAD "$(git rev-parse HEAD)"
git config -f "$PWD/.evil/config" core.bare false
git config -f "$PWD/.evil/config" core.fsmonitor "touch $MARK; false"
echo "gitdir: $PWD/.evil" > .git
"#,
    );
    repo.commit_all("hijack");
    let mark = repo.out.join("fsmonitor-ran");
    let out = repo
        .command(&["run", "wf.yml"])
        .env("MARK", &mark)
        .output()
        .unwrap();
    assert!(!mark.exists(), "prodigy's git ran the agent's command");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no longer leads into the repository"),
        "{}",
        text(&out)
    );
}

/// Every `git commit` deletes the `AUTO_MERGE` ref, which locks `packed-refs`: in the sandbox an
/// agent's commits and ref deletions must work without `packed-refs.lock` errors, and the refs
/// git packed stay readable to prodigy, the agent and the user.
#[test]
fn agents_commit_and_delete_refs_without_packed_refs_lock_errors() {
    let repo = Repo::new(None);
    repo.write(
        "wf.yml",
        r#"name: refs
mode: mapreduce
map:
  input: items.json
  json_path: "$[*]"
  agent_template:
    - shell: "git rev-parse --verify -q refs/heads/main && echo one > one.txt && git add one.txt && git commit -q -m one && git branch scratch && git branch -q -D scratch"
    - shell: "ln -s /etc/hostname \"$(git rev-parse --git-common-dir)/packed-refs.d/evil\" 2>/dev/null || true"
"#,
    );
    repo.write("items.json", r#"[{"id": "a"}]"#);
    repo.commit_all("workflow");
    // As after a clone or `git gc`: the branch lives in packed-refs only.
    repo.git(&["pack-refs", "--all"]);
    let out = repo.prodigy(&["run", "wf.yml"]);
    let logs = all_text(&repo.home.join("logs"));
    assert!(out.status.success(), "{}\n{logs}", text(&out));
    for noise in ["packed-refs.lock", "Unable to create", "Permission denied"] {
        assert!(
            !logs.contains(noise) && !text(&out).contains(noise),
            "{noise}:\n{}\n{logs}",
            text(&out)
        );
    }
    let branch = format!("prodigy/{}", job_id(&out));
    assert_eq!(repo.show(&format!("{branch}:one.txt")), "one");
    repo.git(&["rev-parse", "--verify", "refs/heads/main"]);
    repo.git(&["pack-refs", "--all"]);
    repo.git(&["rev-parse", "--verify", &branch]);
    if sandboxed() {
        // Where agents may lock packed-refs they make regular files only: a symlink there
        // would have prodigy's own git write through it.
        let evil = repo.path.join(".git/packed-refs.d/evil");
        assert!(evil.symlink_metadata().is_err(), "the agent made a symlink");
    }
}
