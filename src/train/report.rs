//! The notebook's outputs: one results-CSV row per run (its 15 columns, in order, appended
//! with the header once) and `report.json`.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use super::checkpoint::EvalSummary;
use super::{EpochRecord, RunOutcome, TrainError};

/// The notebook's CSV columns, in order.
pub const CSV_COLUMNS: [&str; 15] = [
    "status",
    "model",
    "checkpoint",
    "seed",
    "gradient_accumulation_steps",
    "base_precision",
    "base_recall",
    "base_f1",
    "base_accuracy",
    "finetuned_precision",
    "finetuned_recall",
    "finetuned_f1",
    "finetuned_accuracy",
    "improvement_f1",
    "error",
];

/// One CSV row; metrics are empty when not computed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CsvRow {
    /// `success` or `failed`.
    pub status: String,
    pub model: String,
    pub checkpoint: String,
    pub seed: u64,
    pub gradient_accumulation_steps: usize,
    pub base: Option<[f64; 4]>,
    pub finetuned: Option<[f64; 4]>,
    pub improvement_f1: Option<f64>,
    /// `Kind: message` on failure.
    pub error: String,
}

fn prfa(s: &EvalSummary) -> [f64; 4] {
    [
        s.metrics.precision,
        s.metrics.recall,
        s.metrics.f1,
        s.metrics.accuracy,
    ]
}

impl CsvRow {
    pub fn new(model: &str, checkpoint: &str, seed: u64, ga: usize) -> Self {
        CsvRow {
            status: "failed".into(),
            model: model.into(),
            checkpoint: checkpoint.into(),
            seed,
            gradient_accumulation_steps: ga,
            base: None,
            finetuned: None,
            improvement_f1: None,
            error: String::new(),
        }
    }

    pub fn set_base(&mut self, base: &EvalSummary) {
        self.base = Some(prfa(base));
    }

    pub fn succeed(&mut self, outcome: &RunOutcome) {
        self.status = "success".into();
        self.base = Some(prfa(&outcome.base_test));
        self.finetuned = Some(prfa(&outcome.finetuned_test));
        self.improvement_f1 = Some(outcome.improvement_f1);
    }

    pub fn fail(&mut self, err: &TrainError) {
        self.status = "failed".into();
        self.error = format!("{}: {err}", err.kind());
    }

    /// The row's cells in column order (floats as Python's repr: shortest round trip).
    pub fn cells(&self) -> Vec<String> {
        let num = |v: Option<f64>| v.map(|x| format!("{x:?}")).unwrap_or_default();
        let four = |v: Option<[f64; 4]>, i: usize| num(v.map(|a| a[i]));
        let mut out = vec![
            self.status.clone(),
            self.model.clone(),
            self.checkpoint.clone(),
            self.seed.to_string(),
            self.gradient_accumulation_steps.to_string(),
        ];
        out.extend((0..4).map(|i| four(self.base, i)));
        out.extend((0..4).map(|i| four(self.finetuned, i)));
        out.push(num(self.improvement_f1));
        out.push(self.error.clone());
        out
    }
}

/// Versions of metafora and of the libraries that shape results, for reports and model cards
/// (library versions read from Cargo.lock at build time).
pub fn versions() -> Value {
    json!({
        "metafora": env!("CARGO_PKG_VERSION"),
        "burn": env!("METAFORA_BURN_VERSION"),
        "tokenizers": env!("METAFORA_TOKENIZERS_VERSION"),
    })
}

/// What `report.json` records of a run.
pub struct Report<'a> {
    /// Final job status: `succeeded`, `failed` or `cancelled`.
    pub status: &'a str,
    pub job_id: Option<&'a str>,
    /// The job spec as given.
    pub spec: Value,
    pub result: &'a Result<RunOutcome, TrainError>,
    /// For a failed run: the base evaluation and the epochs it finished.
    pub base: Option<&'a EvalSummary>,
    pub epochs: &'a [EpochRecord],
    pub total_seconds: f64,
}

impl Report<'_> {
    /// The `report.json` document: spec, outcome (or error with what was done), versions.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "status": self.status,
            "spec": self.spec,
            "versions": versions(),
            "total_seconds": self.total_seconds,
        });
        if let Some(id) = self.job_id {
            v["job_id"] = json!(id);
        }
        match self.result {
            Ok(o) => v["outcome"] = json!(o),
            Err(e) => {
                v["error"] = json!(format!("{}: {e}", e.kind()));
                v["base_test"] = json!(self.base);
                v["epochs"] = json!(self.epochs);
            }
        }
        v
    }
}

/// CSV text (RFC 4180 with CRLF line ends and minimal quoting, as Python's csv module writes):
/// the header when `header`, then the rows.
pub fn csv_text(header: bool, rows: &[Vec<String>]) -> String {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let write = |w: &mut csv::Writer<Vec<u8>>| -> csv::Result<()> {
        if header {
            w.write_record(CSV_COLUMNS)?;
        }
        for r in rows {
            w.write_record(r)?;
        }
        w.flush()?;
        Ok(())
    };
    write(&mut w).expect("CSV into memory: this is a bug");
    String::from_utf8(w.into_inner().expect("CSV into memory: this is a bug"))
        .expect("CSV of UTF-8 cells is UTF-8: this is a bug")
}

/// CSV text with its own header row (same dialect as [`csv_text`]).
pub fn csv_table<S: AsRef<str>>(header: &[S], rows: &[Vec<String>]) -> String {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let write = |w: &mut csv::Writer<Vec<u8>>| -> csv::Result<()> {
        w.write_record(header.iter().map(|h| h.as_ref()))?;
        for r in rows {
            w.write_record(r)?;
        }
        w.flush()?;
        Ok(())
    };
    write(&mut w).expect("CSV into memory: this is a bug");
    String::from_utf8(w.into_inner().expect("CSV into memory: this is a bug"))
        .expect("CSV of UTF-8 cells is UTF-8: this is a bug")
}

/// Appends a row to `path`, writing the header first when the file is new or empty.
pub fn append_csv(path: &Path, row: &CsvRow) -> Result<(), TrainError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    let new = std::fs::metadata(path)
        .map(|m| m.len() == 0)
        .unwrap_or(true);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    f.write_all(csv_text(new, &[row.cells()]).as_bytes())
        .map_err(|e| TrainError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_row_has_empty_metrics_and_kind() {
        let mut r = CsvRow::new("m", "dir", 42, 1);
        r.fail(&TrainError::Cancelled);
        assert_eq!(r.cells()[0], "failed");
        assert_eq!(r.cells()[5], "");
        assert_eq!(r.cells()[14], "Cancelled: cancelled");
        assert_eq!(r.cells().len(), CSV_COLUMNS.len());
    }

    #[test]
    fn floats_print_like_python_repr() {
        let mut r = CsvRow::new("m", "a,b", 1, 1);
        r.base = Some([0.8708487084870848, 1.0, 0.0, 0.5]);
        let cells = r.cells();
        assert_eq!(&cells[5..9], ["0.8708487084870848", "1.0", "0.0", "0.5"]);
        assert!(csv_text(true, &[r.cells()]).contains("\"a,b\""));
    }

    #[test]
    fn quoting_matches_python_csv() {
        // Python: csv.writer(f).writerow(["a", 'q"uote', "com,ma", "new\nline", ""])
        let text = csv_text(
            false,
            &[vec![
                "a".into(),
                "q\"uote".into(),
                "com,ma".into(),
                "new\nline".into(),
                String::new(),
            ]],
        );
        assert_eq!(text, "a,\"q\"\"uote\",\"com,ma\",\"new\nline\",\r\n");
    }

    #[test]
    fn header_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.csv");
        append_csv(&p, &CsvRow::new("a", "x", 1, 1)).unwrap();
        append_csv(&p, &CsvRow::new("b", "x", 1, 1)).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.matches("status,model").count(), 1);
        assert_eq!(text.lines().count(), 3);
    }
}
