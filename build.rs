//! Records the versions of the libraries that shape results (burn, tokenizers) from
//! Cargo.lock, for report.json and model cards.

fn locked_version(lock: &str, name: &str) -> Option<String> {
    let header = format!("name = \"{name}\"\n");
    let at = lock.find(&header)? + header.len();
    let line = lock[at..].lines().next()?;
    Some(
        line.strip_prefix("version = \"")?
            .trim_end_matches('"')
            .to_string(),
    )
}

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    for (name, var) in [
        ("burn", "METAFORA_BURN_VERSION"),
        ("tokenizers", "METAFORA_TOKENIZERS_VERSION"),
    ] {
        let v = locked_version(&lock, name).unwrap_or_else(|| "unknown".into());
        println!("cargo:rustc-env={var}={v}");
    }
}
