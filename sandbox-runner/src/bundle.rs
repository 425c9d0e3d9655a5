//! The run bundle as the runner reads it: the contract types of `oauth3-protocol`, plus
//! reading the sealed secrets a pod launcher projects as a directory.

pub use oauth3_protocol::bundle::*;

/// Why the sealed-secret directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SealedDirError {
    /// Listing the directory failed.
    #[error("reading --sealed-dir {}: {source}", dir.display())]
    Dir {
        /// The directory.
        dir: std::path::PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Reading one envelope file failed.
    #[error("reading sealed secret {}: {source}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

/// Reads sealed secrets from a directory with one file per secret, named as the Permit names
/// it and holding its envelope: the layout of the projected volume the pod launcher mounts.
/// Entries starting with `.` (the volume's `..data` bookkeeping) are skipped; symlinks are
/// followed; the result is sorted by name.
///
/// # Errors
/// [`SealedDirError`] naming the directory or file that could not be read.
pub fn sealed_secrets_from_dir(
    dir: &std::path::Path,
) -> Result<Vec<SealedSecretRef>, SealedDirError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SealedDirError::Dir {
        dir: dir.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SealedDirError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let envelope = std::fs::read_to_string(&path).map_err(|source| SealedDirError::File {
            path: path.clone(),
            source,
        })?;
        out.push(SealedSecretRef {
            name,
            envelope: envelope.trim().to_owned(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
