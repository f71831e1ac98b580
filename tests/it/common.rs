//! Fixture paths and small helpers shared by the integration tests.

use std::path::PathBuf;

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Reads a JSON fixture.
pub fn json(rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// The database of a test whose files live in `dir`: an SQLite file there, or — with
/// `METAFORA_TEST_PG_URL` set (CI sets it to a throwaway PostgreSQL server) — a fresh
/// PostgreSQL database created for `dir` (the same one again for the same `dir`, so restart
/// tests find their data).
pub fn database_url(dir: &std::path::Path) -> String {
    let Ok(base) = std::env::var("METAFORA_TEST_PG_URL") else {
        return format!("sqlite://{}", dir.join("metafora.db").display());
    };
    let marker = dir.join("pg-database-url");
    if let Ok(url) = std::fs::read_to_string(&marker) {
        return url;
    }
    std::fs::create_dir_all(dir).unwrap();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    // A blocking connection on its own thread: callers may be inside a runtime.
    let base2 = base.clone();
    let create = format!("CREATE DATABASE {name}");
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                use sqlx::Connection;
                sqlx::any::install_default_drivers();
                let mut c = sqlx::AnyConnection::connect(&base2).await.unwrap();
                // The name is generated above (t_ + hex), never user input.
                sqlx::query(sqlx::AssertSqlSafe(create))
                    .execute(&mut c)
                    .await
                    .unwrap();
            })
    })
    .join()
    .unwrap();
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("METAFORA_TEST_PG_URL must end with /DATABASE"),
    };
    std::fs::write(&marker, &url).unwrap();
    url
}

/// Every number of a (nested) JSON array, in order (reference logits, hidden states).
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Number(n) => out.push(n.as_f64().unwrap() as f32),
            _ => panic!("not a number: {v}"),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// A JSON array of token ids.
pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}
