//! TensorBoard event files (`events.out.tfevents.*`), so `tensorboard --logdir` compares runs:
//! TFRecord framing (length, masked CRC-32C of the length, the record, masked CRC-32C of the
//! record) around `Event` protobufs holding scalar summaries, written with `prost`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

/// `tensorflow.Event` (event.proto): the fields a scalar log uses.
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary` (summary.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with `simple_value`. The value is a member of the proto's
/// `oneof value`, so it is written even when 0 (a plain proto3 field would be left out, and
/// TensorBoard would drop the point).
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(oneof = "Value", tags = "2")]
    value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Value {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
}

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// TFRecord's masked CRC-32C.
fn masked_crc(bytes: &[u8]) -> u32 {
    let c = CASTAGNOLI.checksum(bytes);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One event file; every write goes straight to a buffered file, flushed by [`flush`].
///
/// [`flush`]: EventWriter::flush
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir` (created), named as TensorFlow names them; `tag` tells files
    /// of successive attempts of one run apart.
    pub fn create(dir: &Path, tag: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "metafora".into());
        let name = format!(
            "events.out.tfevents.{}.{}.{}.{tag}",
            wall_time() as u64,
            host.replace(['/', '\\'], "_"),
            std::process::id()
        );
        let path = dir.join(name);
        let mut w = EventWriter {
            out: BufWriter::new(File::create(&path)?),
            path,
        };
        w.write(&Event {
            wall_time: wall_time(),
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, event: &Event) -> std::io::Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(&data)?;
        self.out.write_all(&masked_crc(&data).to_le_bytes())
    }

    /// Scalars sharing a step, as one event.
    pub fn scalars(&mut self, step: usize, values: &[(String, f64)]) -> std::io::Result<()> {
        self.write(&Event {
            wall_time: wall_time(),
            step: step as i64,
            what: Some(What::Summary(Summary {
                value: values
                    .iter()
                    .map(|(tag, v)| SummaryValue {
                        tag: tag.clone(),
                        value: Some(Value::SimpleValue(*v as f32)),
                    })
                    .collect(),
            })),
        })
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A run's TensorBoard log (`<output>/tensorboard/`): training loss and learning rate per
/// optimizer step, validation metrics per epoch (and the training subset's, when scored), base
/// and fine-tuned test metrics. A write error is logged once and ends the log, never the run.
pub struct RunLog {
    writer: Option<EventWriter>,
}

impl RunLog {
    /// Opens a new event file under `output/tensorboard`; a resumed run's file is named after
    /// the step it starts from.
    pub fn open(output: &Path, start_step: usize) -> Self {
        let writer = EventWriter::create(&output.join("tensorboard"), &format!("from{start_step}"))
            .map_err(|e| tracing::warn!(error = %e, "no TensorBoard log"))
            .ok();
        RunLog { writer }
    }

    fn put(&mut self, step: usize, values: &[(String, f64)], flush: bool) {
        let Some(w) = &mut self.writer else { return };
        let r = w
            .scalars(step, values)
            .and_then(|_| if flush { w.flush() } else { Ok(()) });
        if let Err(e) = r {
            tracing::warn!(error = %e, path = %w.path().display(), "TensorBoard log stopped");
            self.writer = None;
        }
    }

    pub fn step(&mut self, step: usize, loss: f64, learning_rate: f64) {
        self.put(
            step,
            &[
                ("train/loss".into(), loss),
                ("train/learning_rate".into(), learning_rate),
            ],
            false,
        );
    }

    fn metrics(prefix: &str, loss: f64, m: &crate::metrics::Metrics) -> Vec<(String, f64)> {
        let mut v = vec![
            (format!("{prefix}/loss"), loss),
            (format!("{prefix}/precision"), m.precision),
            (format!("{prefix}/recall"), m.recall),
            (format!("{prefix}/f1"), m.f1),
            (format!("{prefix}/accuracy"), m.accuracy),
        ];
        for (label, prf) in &m.per_label {
            v.push((format!("{prefix}/f1_{label}"), prf.f1));
        }
        v
    }

    pub fn epoch(&mut self, r: &super::EpochRecord) {
        let mut v = Self::metrics("eval", r.eval_loss, &r.eval);
        v.push(("train/epoch_loss".into(), r.train_loss));
        if let Some(t) = &r.train_eval {
            v.extend(Self::metrics("train_subset", t.loss, &t.metrics));
        }
        self.put(r.step, &v, true);
    }

    /// `kind`: `base` or `finetuned`.
    pub fn test(&mut self, kind: &str, step: usize, s: &super::EvalSummary) {
        self.put(
            step,
            &Self::metrics(&format!("test_{kind}"), s.loss, &s.metrics),
            true,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask_match_tensorflow() {
        // CRC-32C check value of "123456789" (RFC 3720) and TFRecord's mask of it.
        assert_eq!(CASTAGNOLI.checksum(b"123456789"), 0xE306_9283);
        // ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2^32, as tensorflow/core/lib/hash/crc32c.h.
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn records_are_framed_and_decode_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), "t").unwrap();
        w.scalars(3, &[("train/loss".into(), 0.5), ("eval/f1".into(), 0.0)])
            .unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let mut at = 0;
        let mut events = Vec::new();
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            let crc_len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(crc_len, masked_crc(&bytes[at..at + 8]));
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc(data));
            events.push(Event::decode(data).unwrap());
            at += 16 + len;
        }
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].what,
            Some(What::FileVersion("brain.Event:2".into()))
        );
        let Some(What::Summary(s)) = &events[1].what else {
            panic!("a summary")
        };
        assert_eq!((events[1].step, s.value[0].tag.as_str()), (3, "train/loss"));
        assert_eq!(s.value[0].value, Some(Value::SimpleValue(0.5)));
        assert_eq!(
            s.value[1].value,
            Some(Value::SimpleValue(0.0)),
            "a zero is written"
        );
    }
}
