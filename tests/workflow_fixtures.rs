//! Every upstream fixture either parses, or (the two with invalid YAML) fails naming file, line and
//! column.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prodigy::workflow::{
    self, Action, CaptureFormat, MapInput, OnItemFailure, Parsed, Workflow, WorkflowError,
    WorkflowKind,
};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prodigy-workflows")
}

fn load(name: &str) -> Parsed {
    let path = fixtures_dir().join(name);
    workflow::load(&path).unwrap_or_else(|e| panic!("{name} should parse: {e}"))
}

fn mapreduce(wf: &Workflow) -> &workflow::MapReduce {
    match &wf.kind {
        WorkflowKind::MapReduce(mr) => mr,
        other => panic!("{} should be mapreduce, is {other:?}", wf.name),
    }
}

fn standard(wf: &Workflow) -> &[workflow::Step] {
    match &wf.kind {
        WorkflowKind::Standard { commands } => commands,
        other => panic!("{} should be standard, is {other:?}", wf.name),
    }
}

const INVALID: &[(&str, usize, usize)] = &[
    ("mapreduce-json-input.yml", 30, 46),
    ("capture-parallel-analysis.yml", 103, 5),
];

#[test]
fn every_fixture_parses_or_fails_precisely() {
    let dir = fixtures_dir();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("read fixtures dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.ends_with(".yml") || name.ends_with(".yaml")) {
            continue;
        }
        seen += 1;
        let result = workflow::load(&path);
        match INVALID.iter().find(|(n, _, _)| *n == name) {
            Some((_, line, column)) => {
                let err = result.expect_err(&format!("{name} has invalid YAML and must fail"));
                assert_eq!(err.position(), Some((*line, *column)), "{name}: {err}");
                let text = err.to_string();
                let prefix = format!("{}:{line}:{column}: ", path.display());
                assert!(text.starts_with(&prefix), "{name}: {text}");
                assert!(text.contains("invalid YAML"), "{text}");
                assert!(text.contains("help:"), "{text}");
            }
            None => {
                if let Err(e) = result {
                    panic!("{name} should parse: {e}");
                }
            }
        }
    }
    assert_eq!(
        seen,
        19,
        "expected all 19 upstream fixtures in {}",
        dir.display()
    );
}

#[test]
fn standard_list_form() {
    let p = load("standard-workflow.yml");
    assert_eq!(p.workflow.name, "standard-workflow");
    let steps = standard(&p.workflow);
    assert_eq!(steps.len(), 7);
    assert_eq!(steps[0].line, 3);
    assert_eq!(
        steps[0].action,
        Action::Shell("echo \"Starting code analysis...\"".into())
    );
    assert!(matches!(&steps[5].action, Action::Shell(s) if s.starts_with("if [ -f README.md ]")));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn capture_conditional_flow_accepts_capture_streams_map() {
    let p = load("capture-conditional-flow.yml");
    assert_eq!(p.workflow.name, "conditional-deployment");
    let steps = standard(&p.workflow);
    assert_eq!(steps.len(), 10);
    assert_eq!(steps[0].capture.as_deref(), Some("tests_passed"));
    assert_eq!(steps[0].capture_format, CaptureFormat::Boolean);
    assert!(steps[0].allow_failure);
    assert_eq!(steps[1].capture_format, CaptureFormat::Number);
    assert_eq!(steps[2].when.as_deref(), Some("${tests_passed}"));
    let build = &steps[6];
    assert_eq!(build.line, 44);
    assert!(build.capture_streams.stdout && build.capture_streams.stderr);
    assert!(build.capture_streams.exit_code && build.capture_streams.success);
}

#[test]
fn mapreduce_env_example_accepts_secret_env() {
    let p = load("mapreduce-env-example.yml");
    let wf = &p.workflow;
    let token = wf
        .env
        .iter()
        .find(|v| v.name == "API_TOKEN")
        .expect("API_TOKEN");
    assert!(token.secret);
    assert_eq!(token.value, "${GITHUB_TOKEN}");
    let plain = wf.env.iter().find(|v| v.name == "MAX_RETRIES").unwrap();
    assert!(!plain.secret);
    assert_eq!(plain.value, "3");
    let mr = mapreduce(wf);
    assert_eq!(mr.map.input, MapInput::File("items.json".into()));
    assert_eq!(mr.map.json_path.as_deref(), Some("$.items[*]"));
    assert_eq!(mr.map.max_parallel, 5);
    assert_eq!(mr.map.agent_template.len(), 4);
    assert_eq!(mr.map.agent_template_line, 56);
    let handler = mr.map.agent_template[3]
        .on_failure
        .as_ref()
        .expect("on_failure list");
    assert_eq!(handler.steps.len(), 1);
    assert_eq!(mr.setup.as_ref().unwrap().commands.len(), 5);
    assert_eq!(mr.merge.as_ref().unwrap().commands.len(), 4);
    // `profiles` is parsed upstream but has no effect here: a warning, never silence.
    assert!(
        p.warnings
            .iter()
            .any(|w| w.line == 28 && w.message.contains("'profiles'")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn debtmap_reduce_details() {
    let p = load("debtmap-reduce.yml");
    let mr = mapreduce(&p.workflow);
    let setup = mr.setup.as_ref().unwrap();
    assert_eq!(setup.timeout, Some(Duration::from_secs(900)));
    assert_eq!(setup.commands.len(), 2);
    assert_eq!(mr.map.max_parallel, 5);
    assert_eq!(mr.map.max_items, Some(10));
    assert_eq!(
        mr.map.filter.as_deref(),
        Some("File.score >= 10 OR Function.unified_score.final_score >= 10")
    );
    assert!(
        mr.map
            .sort_by
            .as_deref()
            .unwrap()
            .starts_with("File.score DESC NULLS LAST")
    );
    let plan = &mr.map.agent_template[0];
    assert_eq!(plan.capture.as_deref(), Some("claude.output"));
    let v = plan.validate.as_ref().unwrap();
    assert_eq!(v.threshold, 75.0);
    assert_eq!(v.commands.len(), 1);
    assert_eq!(v.on_incomplete.as_ref().unwrap().max_attempts, 3);
    assert!(!v.on_incomplete.as_ref().unwrap().fail_workflow);
    let tests = &mr.map.agent_template[2];
    let of = tests.on_failure.as_ref().unwrap();
    assert_eq!(of.max_attempts, 5);
    assert!(of.fail_workflow);
    let reduce = mr.reduce.as_ref().unwrap();
    assert_eq!(reduce.commands.len(), 6);
    match &reduce.commands[4].action {
        Action::WriteFile(w) => {
            assert_eq!(w.path, ".prodigy/map-results.json");
            assert_eq!(w.content, "${map.results}");
            assert_eq!(w.format, workflow::WriteFormat::Json);
            assert!(w.create_dirs);
        }
        other => panic!("expected write_file, got {other:?}"),
    }
    // The shell-style continuation lines of a claude block become one line.
    assert_eq!(
        reduce.commands[5].action,
        Action::Claude(
            "/prodigy-compare-debt-results --before .prodigy/debtmap-before.json --after \
             .prodigy/debtmap-after.json --map-results-file .prodigy/map-results.json \
             --successful ${map.successful} --failed ${map.failed} --total ${map.total}"
                .into()
        )
    );
}

#[test]
fn book_docs_drift_resolves_max_parallel_from_env_and_warns_error_collection() {
    let p = load("book-docs-drift.yml");
    let mr = mapreduce(&p.workflow);
    assert_eq!(mr.map.max_parallel, 3);
    assert_eq!(mr.map.json_path.as_deref(), Some("$[*]"));
    assert_eq!(
        mr.map.input,
        MapInput::File("${ANALYSIS_DIR}/flattened-items.json".into())
    );
    assert_eq!(mr.error_policy.max_failures, Some(2));
    assert!(mr.error_policy.continue_on_failure);
    assert_eq!(mr.error_policy.on_item_failure, OnItemFailure::Dlq);
    assert!(
        p.warnings
            .iter()
            .any(|w| w.line == 99 && w.message.contains("error_collection")),
        "{:?}",
        p.warnings
    );
    // on_incomplete written as a single step keeps its commit_required.
    let fix = &mr.map.agent_template[1];
    let inc = fix
        .validate
        .as_ref()
        .unwrap()
        .on_incomplete
        .as_ref()
        .unwrap();
    assert!(inc.commands[0].commit_required);
    assert_eq!(inc.max_attempts, 3);
}

#[test]
fn command_inputs_and_timeouts() {
    let p = load("mapreduce-command-input.yml");
    let mr = mapreduce(&p.workflow);
    assert_eq!(
        mr.map.input,
        MapInput::Command("find . -name '*.rs' -type f | head -20".into())
    );
    assert_eq!(mr.map.agent_timeout, Some(Duration::from_secs(30)));
    assert_eq!(mr.map.max_parallel, 5);

    let p = load("test-mapreduce.yml");
    let mr = mapreduce(&p.workflow);
    assert!(matches!(&mr.map.input, MapInput::Command(c) if c.starts_with("echo '[")));

    let p = load("test-mapreduce-resume.yml");
    let mr = mapreduce(&p.workflow);
    assert_eq!(
        mr.map.input,
        MapInput::File("/tmp/resume-test-items.json".into())
    );
    assert_eq!(mr.map.json_path.as_deref(), Some("$[*]"));
    assert_eq!(mr.map.max_parallel, 2);
}

#[test]
fn other_fixture_details() {
    let p = load("coverage-with-test-debug.yml");
    let steps = standard(&p.workflow);
    assert_eq!(steps.len(), 5);
    assert_eq!(steps[0].id.as_deref(), Some("coverage"));
    assert!(p.warnings.iter().any(|w| w.message.contains("'outputs'")));
    assert!(p.warnings.iter().any(|w| w.message.contains("'analysis'")));
    let of = steps[2].on_failure.as_ref().unwrap();
    assert_eq!((of.max_attempts, of.fail_workflow), (3, false));

    let p = load("implement.yml");
    assert_eq!(standard(&p.workflow).len(), 3);
    assert!(
        p.warnings
            .iter()
            .any(|w| w.line == 33 && w.message.contains("'merge'"))
    );

    let p = load("environment-example.yml");
    let steps = standard(&p.workflow);
    assert_eq!(steps.len(), 5);
    assert_eq!(steps[1].working_dir.as_deref(), Some("./frontend"));
    assert_eq!(steps[1].env.len(), 2);
    assert!(
        p.workflow
            .env
            .iter()
            .any(|v| v.name == "API_KEY" && v.secret)
    );
    assert!(p.warnings.iter().any(|w| w.message.contains("WORKERS")));
    assert!(p.warnings.iter().any(|w| w.message.contains("'env_files'")));

    for (name, parallel, template) in [
        ("minimal-mapreduce.yml", 3, 3),
        ("test-commit-validation.yml", 3, 1),
        ("test-mapreduce-context.yml", 2, 1),
        ("fix-files-mapreduce.yml", 4, 2),
        ("documentation-drift-mapreduce.yml", 4, 4),
        ("mapreduce-example.yml", 10, 2),
    ] {
        let p = load(name);
        let mr = mapreduce(&p.workflow);
        assert_eq!(mr.map.max_parallel, parallel, "{name}");
        assert_eq!(mr.map.agent_template.len(), template, "{name}");
        assert!(matches!(mr.map.input, MapInput::File(_)), "{name}");
    }
    let p = load("minimal-mapreduce.yml");
    assert!(mapreduce(&p.workflow).map.agent_template[2].commit_required);
    let p = load("documentation-drift-mapreduce.yml");
    assert_eq!(
        mapreduce(&p.workflow).map.agent_template[0].timeout,
        Some(Duration::from_secs(300))
    );
}

fn parse_err(text: &str) -> WorkflowError {
    workflow::parse(Path::new("wf.yml"), text).expect_err("should fail")
}

#[test]
fn invalid_values_are_errors_with_positions() {
    let e =
        parse_err("map:\n  input: a.json\n  max_parallel: 0\n  agent_template:\n    - shell: x\n");
    assert_eq!(e.position(), Some((3, 17)), "{e}");
    assert!(
        e.to_string()
            .starts_with("wf.yml:3:17: max_parallel must be at least 1"),
        "{e}"
    );

    let e = parse_err("- shell: x\n  timeout: -5\n");
    assert_eq!(e.position(), Some((2, 12)), "{e}");

    let e = parse_err("- shell: x\n  capture_format: xml\n");
    assert!(
        e.to_string().contains("unknown capture_format 'xml'"),
        "{e}"
    );

    let e = parse_err("- write_file:\n    path: ../outside.txt\n    content: hi\n");
    assert_eq!(e.position(), Some((2, 11)), "{e}");
    let e = parse_err("- write_file:\n    path: /etc/passwd\n    content: hi\n");
    assert!(e.to_string().contains("absolute"), "{e}");

    let e = parse_err("mode: turbo\ncommands: []\n");
    assert!(e.to_string().contains("unknown mode 'turbo'"), "{e}");
}

#[test]
fn unknown_keys_warn_with_suggestion_and_timeouts_accept_units() {
    let p = workflow::parse(
        Path::new("wf.yml"),
        "- shell: x\n  timout: 5m\n  timeout: 1h30m\n- claude: /y\n  timeout: \"30s\"\n",
    )
    .unwrap();
    let w = &p.warnings[0];
    assert_eq!((w.line, w.column), (2, 3));
    assert!(
        w.message.contains("did you mean 'timeout'"),
        "{}",
        w.message
    );
    let steps = standard(&p.workflow);
    assert_eq!(steps[0].timeout, Some(Duration::from_secs(5400)));
    assert_eq!(steps[1].timeout, Some(Duration::from_secs(30)));
}

#[test]
fn mapreduce_is_detected_from_the_document_not_text() {
    // A standard workflow whose command mentions "mode: mapreduce" stays standard.
    let p = workflow::parse(Path::new("a.yml"), "- shell: \"echo 'mode: mapreduce'\"\n").unwrap();
    assert!(matches!(p.workflow.kind, WorkflowKind::Standard { .. }));
    // A map key without mode is mapreduce; shortcuts at top level feed the error policy.
    let p = workflow::parse(
        Path::new("b.yml"),
        "map:\n  input: {command: ls}\n  agent_template: {commands: [{shell: echo}]}\n\
         on_item_failure: skip\nmax_failures: 3\nfailure_threshold: 0.5\n\
         retry_config: {max_attempts: 4}\nerror_policy: {continue_on_failure: false}\n",
    )
    .unwrap();
    let mr = mapreduce(&p.workflow);
    assert_eq!(mr.map.input, MapInput::Command("ls".into()));
    assert_eq!(mr.map.agent_template.len(), 1);
    assert_eq!(mr.error_policy.on_item_failure, OnItemFailure::Skip);
    assert_eq!(mr.error_policy.max_failures, Some(3));
    assert_eq!(mr.error_policy.failure_threshold, Some(0.5));
    assert_eq!(mr.error_policy.max_retries, 4);
    assert!(!mr.error_policy.continue_on_failure);
}

#[test]
fn setup_capture_outputs_name_setup_steps() {
    let p = workflow::parse(
        Path::new("c.yml"),
        "mode: mapreduce\nsetup:\n  commands:\n    - shell: echo 1\n    - shell: echo 2\n  \
         capture_outputs:\n    FIRST: 0\n    SECOND: {command_index: 1}\n\
         map:\n  input: x.json\n  agent_template:\n    - shell: echo\n",
    )
    .unwrap();
    let setup = mapreduce(&p.workflow).setup.as_ref().unwrap();
    assert_eq!(setup.commands[0].capture.as_deref(), Some("FIRST"));
    assert_eq!(setup.commands[1].capture.as_deref(), Some("SECOND"));
}

#[test]
fn duplicate_keys_are_errors() {
    let e = parse_err("- shell: a\n  timeout: 5\n  timeout: 6\n");
    assert_eq!(e.position(), Some((3, 3)), "{e}");
    assert!(e.to_string().contains("duplicate key 'timeout'"), "{e}");
}

#[test]
fn step_forms() {
    let p = workflow::parse(
        Path::new("s.yml"),
        r#"
commands:
  - shell: make
    id: build
    capture_output: build_log
    capture_streams: both
    env: {N: 3, FLAG: true, S: {secret: true, value: x}, Y: yes}
    on_success:
      shell: echo ok
    on_failure:
      - shell: echo one
      - claude: /fix
  - shell: test
    on_failure:
      commands:
        - shell: echo retry
      max_attempts: 4
      fail_workflow: false
  - claude: /check
    validate:
      shell: ./score.sh
      result_file: r.json
      threshold: 80
      on_incomplete:
        commands: [{claude: /more}]
        max_attempts: 2
  - write_file:
      path: out/a.yaml
      content: {a: 1}
      format: yaml
      create_dirs: true
      mode: 0640
  - foreach:
      input: [a, b, 3]
      parallel: 4
      continue_on_error: true
      max_items: 2
      do:
        - shell: echo ${item}
  - foreach:
      foreach: ls
      parallel: true
      do: [{shell: echo}]
"#,
    )
    .unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let s = standard(&p.workflow);
    assert_eq!(s[0].id.as_deref(), Some("build"));
    assert_eq!(s[0].capture.as_deref(), Some("build_log"));
    assert!(s[0].capture_streams.stdout && s[0].capture_streams.stderr);
    let env: Vec<_> = s[0]
        .env
        .iter()
        .map(|v| (v.name.as_str(), v.value.as_str(), v.secret))
        .collect();
    assert_eq!(
        env,
        [
            ("N", "3", false),
            ("FLAG", "true", false),
            ("S", "x", true),
            ("Y", "yes", false)
        ]
    );
    assert_eq!(
        s[0].on_success.as_ref().unwrap().action,
        Action::Shell("echo ok".into())
    );
    let of = s[0].on_failure.as_ref().unwrap();
    assert_eq!(
        (of.steps.len(), of.max_attempts, of.fail_workflow),
        (2, 1, true)
    );
    let of = s[1].on_failure.as_ref().unwrap();
    assert_eq!(
        (of.steps.len(), of.max_attempts, of.fail_workflow),
        (1, 4, false)
    );
    let v = s[2].validate.as_ref().unwrap();
    assert_eq!(v.commands[0].action, Action::Shell("./score.sh".into()));
    assert_eq!(
        (v.result_file.as_deref(), v.threshold),
        (Some("r.json"), 80.0)
    );
    let inc = v.on_incomplete.as_ref().unwrap();
    assert_eq!(
        (inc.commands.len(), inc.max_attempts, inc.fail_workflow),
        (1, 2, true)
    );
    match &s[3].action {
        Action::WriteFile(w) => {
            assert_eq!(w.path, "out/a.yaml");
            assert_eq!(w.content, r#"{"a":1}"#);
            assert_eq!(w.format, workflow::WriteFormat::Yaml);
            assert_eq!(w.mode, Some(0o640));
            assert!(w.create_dirs);
        }
        other => panic!("{other:?}"),
    }
    match &s[4].action {
        Action::Foreach(f) => {
            assert_eq!(
                f.over,
                workflow::ForeachInput::List(vec!["a".into(), "b".into(), 3.into()])
            );
            assert_eq!(
                (f.parallel, f.continue_on_error, f.max_items),
                (4, true, Some(2))
            );
            assert_eq!(f.steps.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    match &s[5].action {
        Action::Foreach(f) => {
            assert_eq!(f.over, workflow::ForeachInput::Command("ls".into()));
            assert!(f.parallel >= 1);
        }
        other => panic!("{other:?}"),
    }
    // A step with two commands, or none, is an error at its position.
    let e = parse_err("- shell: a\n  claude: /b\n");
    assert_eq!(e.position(), Some((2, 3)), "{e}");
    let e = parse_err("- id: x\n");
    assert!(e.to_string().contains("needs a command"), "{e}");
}

#[test]
fn input_rule_and_duration_text() {
    use prodigy::workflow::parse::{classify_input, parse_duration_text};
    let file = |s: &str| MapInput::File(s.into());
    let cmd = |s: &str| MapInput::Command(s.into());
    assert_eq!(classify_input("items.json"), file("items.json"));
    assert_eq!(classify_input("/tmp/x.json"), file("/tmp/x.json"));
    assert_eq!(classify_input("${DIR}/x y.json"), cmd("${DIR}/x y.json"));
    assert_eq!(
        classify_input("${DIR}/items.json"),
        file("${DIR}/items.json")
    );
    assert_eq!(classify_input("ls"), file("ls"));
    assert_eq!(classify_input("shell: ls"), cmd("ls"));
    assert_eq!(classify_input("file: my items.json"), file("my items.json"));
    assert_eq!(classify_input("cat a.json|jq ."), cmd("cat a.json|jq ."));
    assert_eq!(
        classify_input("find . -name '*.rs'"),
        cmd("find . -name '*.rs'")
    );
    assert_eq!(parse_duration_text("90"), Some(90.0));
    assert_eq!(parse_duration_text("1h30m"), Some(5400.0));
    assert_eq!(parse_duration_text("250ms"), Some(0.25));
    assert_eq!(parse_duration_text("2 days"), Some(172800.0));
    assert_eq!(parse_duration_text("soon"), None);
    assert_eq!(parse_duration_text("5x"), None);
}

#[test]
fn budget_grace_is_a_duration_with_a_default() {
    let wf = |budget: &str| {
        format!(
            "mode: mapreduce\nbudget:\n{budget}map:\n  input: a.json\n  agent_template:\n    - shell: x\n"
        )
    };
    let p = workflow::parse(Path::new("wf.yml"), &wf("  max_cost_usd: 5\n  grace: 2m\n")).unwrap();
    assert_eq!(p.workflow.budget.grace(), Duration::from_secs(120));
    let p = workflow::parse(Path::new("wf.yml"), &wf("  max_cost_usd: 5\n")).unwrap();
    assert_eq!(p.workflow.budget.grace(), workflow::Budget::DEFAULT_GRACE);
    let e = parse_err(&wf("  grace: -1\n"));
    assert_eq!(e.position(), Some((3, 10)), "{e}");
    assert!(e.to_string().contains("grace must be positive"), "{e}");
    let e = parse_err(&wf("  grase: 5s\n"));
    assert!(
        e.to_string().contains("unknown key 'grase' in budget"),
        "{e}"
    );
    assert!(e.to_string().contains("did you mean 'grace'?"), "{e}");
}
