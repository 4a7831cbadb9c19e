//! Reading the store back: what `collector read` prints for the file sink (from `--data-dir`,
//! or from a config's `data_dir`). A forward cursor per org over the segment files; it never
//! takes the store's lock and changes nothing.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::store::{OrgReader, StoreError, stored_orgs};
use crate::data::sink::entry::Found;

/// How often `follow` looks for new data.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ReadStoreError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{dir} holds no ringflow store (no segments/ directory); pass the collector's data_dir")]
    NoStore { dir: String },
}

/// Hands every stored batch (of `org`, or of all orgs) in `data_dir` to `found`; with `follow`,
/// keeps polling for new ones until `stop` fires or `found` breaks. Problems found in the store
/// are handed over as [`Found::Problem`] and reading goes on.
pub fn read_store(
    data_dir: &Path,
    org: Option<&str>,
    follow: bool,
    stop: &CancellationToken,
    found: &mut dyn FnMut(Found<'_>) -> ControlFlow<()>,
) -> Result<(), ReadStoreError> {
    if !data_dir.join("segments").is_dir() {
        return Err(ReadStoreError::NoStore {
            dir: data_dir.display().to_string(),
        });
    }
    let mut readers: Vec<(String, OrgReader)> = Vec::new();
    loop {
        add_new_orgs(data_dir, org, &mut readers)?;
        for (name, reader) in &mut readers {
            if read_org(name, reader, found)?.is_break() {
                return Ok(());
            }
        }
        if !follow || stop.is_cancelled() {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Starts a reader for every org (or just `org`) not read yet.
fn add_new_orgs(
    data_dir: &Path,
    org: Option<&str>,
    readers: &mut Vec<(String, OrgReader)>,
) -> Result<(), StoreError> {
    let orgs = match org {
        Some(o) => vec![o.to_owned()],
        None => stored_orgs(data_dir)?,
    };
    for o in orgs {
        if !readers.iter().any(|(name, _)| *name == o) {
            readers.push((o.clone(), OrgReader::new(data_dir, &o)));
        }
    }
    Ok(())
}

/// Hands what `reader` has for org `name` to `found`: its problems, then its batches.
fn read_org(
    name: &str,
    reader: &mut OrgReader,
    found: &mut dyn FnMut(Found<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, StoreError> {
    let mut batches = Vec::new();
    let progress = reader.read_available(&mut batches)?;
    let retention = progress.skipped_by_retention.then(|| {
        format!(
            "org {name}: records were deleted by retention (sink.file.max_bytes) before they could be read; skipped"
        )
    });
    let corruption = progress
        .corruption
        .iter()
        .map(|problem| format!("org {name}: {problem}"));
    for problem in retention.into_iter().chain(corruption) {
        if found(Found::Problem(problem)).is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    for batch in &batches {
        if found(Found::Batch(batch)).is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
}
