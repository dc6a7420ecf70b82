//! Results as CSV files under `--out` (one row per measured step), next to the figures the
//! benchmarks print, so that bench/plot.sh and spreadsheets can use them. Rows are flushed as
//! they are written: a sweep stopped halfway keeps the steps it measured.

use std::fmt::Display;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::histogram::Latencies;

pub struct Csv {
    out: BufWriter<File>,
    path: PathBuf,
}

impl Csv {
    /// Creates (or replaces) `dir/name` with a header line.
    pub fn create(dir: &Path, name: &str, header: &[&str]) -> anyhow::Result<Csv> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join(name);
        let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let mut csv = Csv {
            out: BufWriter::new(file),
            path,
        };
        csv.row(header)?;
        Ok(csv)
    }

    pub fn row<I>(&mut self, values: I) -> anyhow::Result<()>
    where
        I: IntoIterator,
        I::Item: Display,
    {
        let line: Vec<String> = values.into_iter().map(|v| v.to_string()).collect();
        writeln!(self.out, "{}", line.join(","))?;
        self.out
            .flush()
            .with_context(|| format!("write {}", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Deletes the files in `dir` whose names start with `prefix` (results of an earlier run
/// that this one would only partly replace).
pub fn remove_earlier(dir: &Path, prefix: &str) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Writes a latency distribution as `latency_ms,fraction` points of its CDF.
pub fn write_cdf(dir: &Path, name: &str, latencies: &Latencies) -> anyhow::Result<PathBuf> {
    let mut csv = Csv::create(dir, name, &["latency_ms", "fraction"])?;
    for (ms, fraction) in latencies.cdf() {
        csv.row([format!("{ms:.4}"), format!("{fraction:.6}")])?;
    }
    Ok(csv.path)
}
