//! seqeval 1.2.2 parity on the 300 reference cases (`fixtures/seqeval/cases.jsonl`).

use metafora::metrics::seqeval::report;
use metafora::metrics::{LabelScheme, Metrics};
use serde_json::Value;

use crate::common::fixture;

fn seqs(v: &Value) -> Vec<Vec<String>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

/// seqeval computes in float64 like we do; the budget is 1e-12.
const TOL: f64 = 1e-12;

#[test]
fn every_reference_case_matches() {
    let text = std::fs::read_to_string(fixture("seqeval/cases.jsonl")).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let c: Value = serde_json::from_str(line).unwrap();
        let id = c["id"].as_str().unwrap();
        let (t, p) = (seqs(&c["y_true"]), seqs(&c["y_pred"]));
        let r = report(&t, &p);
        for (got, key) in [
            (r.micro.precision, "precision"),
            (r.micro.recall, "recall"),
            (r.micro.f1, "f1"),
            (r.accuracy, "accuracy"),
        ] {
            assert!(
                (got - c[key].as_f64().unwrap()).abs() <= TOL,
                "{id}: {key} {got} vs {}",
                c[key]
            );
        }
        let want = c["per_type"].as_object().unwrap();
        assert_eq!(r.per_type.len(), want.len(), "{id}: per-type rows");
        // Under real label names, via LabelScheme.
        let mut labels: Vec<String> = t.iter().chain(&p).flatten().cloned().collect();
        labels.sort();
        labels.dedup();
        let scheme = LabelScheme::new(&labels).unwrap_or_else(|e| panic!("{id}: {e}"));
        let m = Metrics::compute(&scheme, &t, &p).unwrap();
        for (ty, row) in want {
            let label = c["label_of_type"][ty].as_str().unwrap();
            let got = &r.per_type[ty];
            let named = &m.per_label[label];
            for (g, key) in [
                (got.precision, "precision"),
                (got.recall, "recall"),
                (got.f1, "f1"),
            ] {
                assert!(
                    (g - row[key].as_f64().unwrap()).abs() <= TOL,
                    "{id}/{ty}: {key}"
                );
            }
            assert_eq!(
                got.support as u64,
                row["support"].as_u64().unwrap(),
                "{id}/{ty}: support"
            );
            assert_eq!(named, got, "{id}: {ty} reported under {label}");
        }
        // Rows we add for labels without entities are all zero.
        for (label, row) in &m.per_label {
            if !want
                .keys()
                .any(|ty| c["label_of_type"][ty] == label.as_str())
            {
                assert_eq!(
                    (row.precision, row.recall, row.f1, row.support),
                    (0.0, 0.0, 0.0, 0),
                    "{id}: extra row {label}"
                );
            }
        }
        n += 1;
    }
    assert_eq!(n, 300);
}
