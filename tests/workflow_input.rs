//! Each stage of the map input pipeline, and the whole order, on real files and commands.

use prodigy::types::ItemKey;
use prodigy::workflow::input::{
    self, distinct_items, filter_items, parse_command_output, select_json_path, sort_items,
};
use prodigy::workflow::{Context, MapInput, MapPhase, apply_pipeline, item_key, load_items};
use serde_json::{Value, json};

fn map(input: MapInput) -> MapPhase {
    MapPhase {
        input,
        json_path: None,
        filter: None,
        sort_by: None,
        distinct: None,
        offset: None,
        max_items: None,
        item_id: None,
        max_parallel: 1,
        agent_template: Vec::new(),
        agent_template_line: 1,
        agent_timeout: None,
    }
}

fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            i.get("n")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

#[test]
fn json_path_selects() {
    let doc = json!({
        "items": [{"n": "a", "p": 1, "tag": "x"}, {"n": "b", "p": 5, "tag": "y"}, {"n": "c", "p": 9, "tag": "x"}],
        "nested": {"deep": {"items": [{"n": "d"}]}}
    });
    let s = |p: &str| select_json_path(&doc, p).unwrap();
    assert_eq!(s("$.items[*]").len(), 3);
    assert_eq!(s("$.items[1]"), vec![doc["items"][1].clone()]);
    assert_eq!(s("$['items'][0].n"), vec![json!("a")]);
    assert_eq!(s("$..n").len(), 4);
    assert_eq!(names(&s("$.items[?(@.p > 2)]")), ["b", "c"]);
    assert_eq!(names(&s("$.items[?(@.p > 2 && @.tag == 'x')]")), ["c"]);
    assert_eq!(names(&s("$.items[?(@.p < 2 || @.p >= 9)]")), ["a", "c"]);
    assert_eq!(names(&s("$.items[?(@.tag != 'x')]")), ["b"]);
    assert_eq!(s("$"), vec![doc.clone()]);
    assert_eq!(names(&s("$.items")), ["a", "b", "c"]);
    let nested = json!([[1, 2]]);
    assert_eq!(
        select_json_path(&nested, "$[*]").unwrap(),
        vec![json!([1, 2])]
    );
    assert_eq!(
        select_json_path(&nested, "$[0]").unwrap(),
        vec![json!(1), json!(2)]
    );
    assert_eq!(s("items[*].n"), vec![json!("a"), json!("b"), json!("c")]);
    assert_eq!(s("[\"items\"][0].n"), vec![json!("a")]);
    let e = select_json_path(&doc, "$.items[").unwrap_err();
    assert_eq!(e.stage, "json_path");
    assert!(e.to_string().contains("not a valid JSONPath"), "{e}");
}

#[test]
fn filter_upstream_syntax() {
    let items = vec![
        json!({"n": "file", "File": {"score": 12}}),
        json!({"n": "fn-hi", "Function": {"unified_score": {"final_score": 15}}}),
        json!({"n": "fn-lo", "Function": {"unified_score": {"final_score": 3}}}),
        json!({"n": "file-lo", "File": {"score": 2}}),
    ];
    let f = |e: &str| names(&filter_items(items.clone(), e).unwrap());
    assert_eq!(
        f("File.score >= 10 OR Function.unified_score.final_score >= 10"),
        ["file", "fn-hi"]
    );
    assert_eq!(
        f("File.score >= 10 || Function.unified_score.final_score >= 10"),
        ["file", "fn-hi"]
    );
    assert_eq!(
        f("NOT File.score >= 10 AND File.score != null"),
        ["file-lo"]
    );
    assert_eq!(f("File.score == null"), ["fn-hi", "fn-lo"]);
    assert_eq!(f("!(File.score < 5)"), ["file", "fn-hi", "fn-lo"]);

    let sev = vec![
        json!({"n": "1", "severity": "high", "path": "src/a.rs", "has_issues": true, "tags": ["x"]}),
        json!({"n": "2", "severity": "low", "path": "README.md", "has_issues": true, "tags": []}),
        json!({"n": "3", "severity": "critical", "path": "src/b.rs", "has_issues": false, "tags": ["x", "y"]}),
    ];
    let g = |e: &str| names(&filter_items(sev.clone(), e).unwrap());
    assert_eq!(
        g("severity == 'high' || severity == 'critical'"),
        ["1", "3"]
    );
    assert_eq!(g("severity in ['high', 'low']"), ["1", "2"]);
    assert_eq!(g("severity not in ['high', 'low']"), ["3"]);
    assert_eq!(g("path matches '\\.rs$' && has_issues == true"), ["1"]);
    assert_eq!(g("tags contains 'y'"), ["3"]);
    assert_eq!(g("has_issues"), ["1", "2"]);
    assert_eq!(g("tags[0] == 'x'"), ["1", "3"]);
    assert_eq!(g("severity == high"), ["1"]);
    let e = filter_items(sev.clone(), "severity ==").unwrap_err();
    assert_eq!(e.stage, "filter");
    assert!(filter_items(sev, "path matches '('").is_err());
}

#[test]
fn sort_by_directions_and_nulls() {
    let mut items = vec![
        json!({"n": "a", "s": 1, "g": "z"}),
        json!({"n": "b"}),
        json!({"n": "c", "s": 9, "g": "a"}),
        json!({"n": "d", "s": 9, "g": "b"}),
        json!({"n": "e", "s": null}),
    ];
    sort_items(&mut items, "s DESC NULLS LAST, g ASC").unwrap();
    assert_eq!(names(&items), ["c", "d", "a", "b", "e"]);
    sort_items(&mut items, "s DESC NULLS FIRST, g").unwrap();
    assert_eq!(names(&items), ["b", "e", "c", "d", "a"]);
    sort_items(&mut items, "s").unwrap();
    assert_eq!(names(&items), ["a", "c", "d", "b", "e"]);
    let e = sort_items(&mut items, "s SIDEWAYS").unwrap_err();
    assert_eq!(e.stage, "sort_by");
}

#[test]
fn distinct_keeps_first_and_items_without_the_field() {
    let items = vec![
        json!({"n": "a", "f": "x"}),
        json!({"n": "b", "f": "y"}),
        json!({"n": "c", "f": "x"}),
        json!({"n": "d"}),
        json!({"n": "e"}),
    ];
    assert_eq!(
        names(&distinct_items(items, "f").unwrap()),
        ["a", "b", "d", "e"]
    );
}

#[test]
fn command_output_shapes() {
    assert_eq!(parse_command_output("[1, 2]\n"), json!([1, 2]));
    assert_eq!(parse_command_output("{\"a\": 1}"), json!({"a": 1}));
    assert_eq!(
        parse_command_output("./a.rs\n\n ./b.rs \n"),
        json!(["./a.rs", "./b.rs"])
    );
    assert_eq!(parse_command_output(""), json!([]));
}

#[test]
fn whole_pipeline_runs_in_upstream_order() {
    let doc = json!({"items": (0..20).map(|i| json!({
        "n": format!("i{i}"), "score": i % 7, "group": i % 3,
    })).collect::<Vec<_>>()});
    let mut m = map(MapInput::File("x.json".into()));
    m.json_path = Some("$.items[*]".into());
    m.filter = Some("score >= 2".into());
    m.sort_by = Some("score DESC, n".into());
    m.distinct = Some("group".into());
    m.offset = Some(1);
    m.max_items = Some(1);
    // score>=2 keeps i2..i6,i9..i13,i16..i19 (scores 2-6); sorted by score desc then name:
    // i13(6) i6(6) i12(5) i19(5) i5(5) ...; distinct by group keeps i13(g1) i6(g0) i12(g0 dup ->
    // dropped) ... first per group: i13(g1), i6(g0), i5(g2); offset 1 -> i6, i5; max 1 -> i6.
    let out = apply_pipeline(doc.clone(), &m).unwrap();
    assert_eq!(names(&out), ["i6"]);
    m.max_items = None;
    assert_eq!(
        names(&apply_pipeline(doc.clone(), &m).unwrap()),
        ["i6", "i5"]
    );
    m.offset = None;
    m.distinct = None;
    let all = apply_pipeline(doc.clone(), &m).unwrap();
    assert_eq!(all.len(), 14);
    assert_eq!(names(&all[..3]), ["i13", "i6", "i12"]);
    // Without json_path an array gives its elements, any other value one item.
    let plain = map(MapInput::File("x.json".into()));
    assert_eq!(apply_pipeline(json!([1, 2]), &plain).unwrap().len(), 2);
    assert_eq!(apply_pipeline(json!({"a": 1}), &plain).unwrap().len(), 1);
}

#[tokio::test]
async fn load_from_file_and_command() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    std::fs::write(
        dir.path().join("sub/items.json"),
        r#"{"items": [{"id": 1}, {"id": 2}, {"id": 3}]}"#,
    )
    .unwrap();
    let mut m = map(MapInput::File("sub/items.json".into()));
    m.json_path = Some("$.items[*]".into());
    assert_eq!(load_items(&m, dir.path()).await.unwrap().len(), 3);

    // Command: JSON on stdout, run in the given directory.
    let mut m = map(MapInput::Command("cat sub/items.json".into()));
    m.json_path = Some("$.items[?(@.id > 1)]".into());
    assert_eq!(
        load_items(&m, dir.path()).await.unwrap(),
        vec![json!({"id": 2}), json!({"id": 3})]
    );
    // Command: lines.
    std::fs::write(dir.path().join("a.rs"), "").unwrap();
    std::fs::write(dir.path().join("b.rs"), "").unwrap();
    let m = map(MapInput::Command("ls *.rs".into()));
    assert_eq!(
        load_items(&m, dir.path()).await.unwrap(),
        vec![json!("a.rs"), json!("b.rs")]
    );

    // Placeholders in the input resolve against the context (the file path as text, the
    // command shell-safely).
    let ctx = Context::new()
        .with_env("DIR", "sub")
        .with_var("pat", json!("*.rs; touch pwned"));
    let mut m = map(MapInput::File("${DIR}/items.json".into()));
    m.json_path = Some("$.items[*]".into());
    assert_eq!(
        input::load_items_in(&m, dir.path(), &ctx)
            .await
            .unwrap()
            .len(),
        3
    );
    let m = map(MapInput::Command("ls ${pat} 2>/dev/null; true".into()));
    assert!(
        input::load_items_in(&m, dir.path(), &ctx)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!dir.path().join("pwned").exists());

    // Errors name the input and the stage.
    let m = map(MapInput::File("missing.json".into()));
    let e = load_items(&m, dir.path()).await.unwrap_err();
    assert_eq!((e.input.as_str(), e.stage), ("file 'missing.json'", "load"));
    assert!(
        e.to_string()
            .starts_with("map input file 'missing.json': load: cannot read"),
        "{e}"
    );
    let m = map(MapInput::Command("echo oops >&2; exit 3".into()));
    let e = load_items(&m, dir.path()).await.unwrap_err();
    assert!(e.to_string().contains("oops"), "{e}");
    assert!(e.input.starts_with("command `echo oops"));
    let mut m = map(MapInput::File("sub/items.json".into()));
    m.filter = Some("id >".into());
    let e = load_items(&m, dir.path()).await.unwrap_err();
    assert_eq!(
        (e.input.as_str(), e.stage),
        ("file 'sub/items.json'", "filter")
    );
}

#[test]
fn item_keys() {
    assert_eq!(
        item_key(&json!({"id": 7, "x": 1}), None),
        ItemKey("7".into())
    );
    assert_eq!(
        item_key(&json!({"item_id": "abc"}), None),
        ItemKey("abc".into())
    );
    assert_eq!(item_key(&json!({"_id": "z"}), None), ItemKey("z".into()));
    assert_eq!(
        item_key(&json!({"id": "a", "path": "p/q"}), Some("path")),
        ItemKey("p/q".into())
    );
    assert_eq!(
        item_key(&json!({"meta": {"key": 3}}), Some("meta.key")),
        ItemKey("3".into())
    );
    let a = item_key(&json!({"b": 1, "a": [1, {"y": 2, "x": 1}]}), None);
    let b = item_key(&json!({"a": [1, {"x": 1, "y": 2}], "b": 1}), None);
    assert_eq!(a, b, "key order does not change the hash");
    assert!(a.0.starts_with("h-") && a.0.len() == 18, "{a}");
    assert_ne!(a, item_key(&json!({"b": 2}), None));
    // Missing named field falls back to the hash; a string item hashes too.
    assert!(
        item_key(&json!({"id": 1}), Some("nope"))
            .0
            .starts_with("h-")
    );
    // Scalar items are their own keys; long or multi-line text is hashed.
    assert_eq!(
        item_key(&json!("src/a.rs"), None),
        ItemKey("src/a.rs".into())
    );
    assert_eq!(item_key(&json!(42), None), ItemKey("42".into()));
    assert!(item_key(&json!("a\nb"), None).0.starts_with("h-"));
    assert!(item_key(&json!("x".repeat(300)), None).0.starts_with("h-"));
    // The hash is SHA-256 of the canonical JSON.
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(br#"{"a":1,"b":2}"#));
    assert_eq!(
        item_key(&json!({"b": 2, "a": 1}), None).0,
        format!("h-{}", &want[..16])
    );
}

/// The expression parsers reject garbage with errors, never a panic (multi-byte text included).
#[test]
fn parsers_never_panic_on_garbage() {
    const PIECES: &[&str] = &[
        "a", ".", "[", "]", "0", "'", "\"", "==", "!", "&&", "||", "(", ")", " ", "é", "ß", "${",
        "}", "|", ":-", "in", "AND", "NOT", "DESC", "NULLS", ",", "$", "\\", "<", ">=", "matches",
        "日本",
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let item = json!({"a": [1, "x"], "é": {"ß": null}});
    let ctx = Context::new()
        .with_var("a", item.clone())
        .with_env("HOME", "/h");
    for _ in 0..3000 {
        let len = (next() % 12) as usize;
        let text: String = (0..len)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        if let Ok(f) = input::Filter::parse(&text) {
            let _ = f.matches(&item);
        }
        let _ = input::parse_sort_by(&text);
        let _ = select_json_path(&item, &text);
        let _ = prodigy::workflow::eval_condition(&text, &ctx);
        let _ = prodigy::workflow::render_text(&text, &ctx);
        let _ = prodigy::workflow::render_shell(&text, &ctx);
        let _ = prodigy::workflow::placeholders(&text);
        let _ = prodigy::workflow::parse(std::path::Path::new("g.yml"), &text);
    }
}
