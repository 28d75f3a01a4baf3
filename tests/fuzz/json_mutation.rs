//! Structural mutations of a JSON (or YAML) document for the properties: delete a node, give it
//! another type, insert a key, duplicate a list element, each at a node an [`Index`] picks.

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

/// One change to a JSON document, at the node an [`Index`] picks.
#[derive(Debug, Clone)]
pub enum Mutation {
    Delete(Index),
    Retype(Index, Value),
    Insert(Index, String, Value),
    Duplicate(Index),
}

pub fn mutation(scalar: BoxedStrategy<Value>) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Delete),
        (any::<Index>(), scalar.clone()).prop_map(|(i, v)| Mutation::Retype(i, v)),
        (any::<Index>(), "[a-z_]{1,12}", scalar).prop_map(|(i, k, v)| Mutation::Insert(i, k, v)),
        any::<Index>().prop_map(Mutation::Duplicate),
    ]
}

/// Every node's path (object keys and array positions), the root first.
fn paths(v: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(PathStep::Key(k.clone()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(PathStep::At(i));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    At(usize),
}

fn node_mut<'v>(v: &'v mut Value, path: &[PathStep]) -> &'v mut Value {
    path.iter().fold(v, |cur, step| match step {
        PathStep::Key(k) => &mut cur[k.as_str()],
        PathStep::At(i) => &mut cur[*i],
    })
}

pub fn apply(doc: &mut Value, m: &Mutation) {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    let pick = |i: &Index| all[i.index(all.len())].clone();
    match m {
        Mutation::Delete(i) => {
            let path = pick(i);
            if let Some((last, parent)) = path.split_last() {
                match (node_mut(doc, parent), last) {
                    (Value::Object(o), PathStep::Key(k)) => {
                        o.remove(k);
                    }
                    (Value::Array(a), PathStep::At(n)) => {
                        a.remove(*n);
                    }
                    _ => {}
                }
            }
        }
        Mutation::Retype(i, v) => *node_mut(doc, &pick(i)) = v.clone(),
        Mutation::Insert(i, k, v) => {
            if let Value::Object(o) = node_mut(doc, &pick(i)) {
                o.insert(k.clone(), v.clone());
            }
        }
        Mutation::Duplicate(i) => {
            let path = pick(i);
            if let Some((PathStep::At(n), parent)) = path.split_last()
                && let Value::Array(a) = node_mut(doc, parent)
            {
                let copy = a[*n].clone();
                a.insert(*n, copy);
            }
        }
    }
}
