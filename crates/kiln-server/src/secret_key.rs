//! The key environment secrets are sealed with in the store:
//! `KILN_SECRET_KEY` when it is set, else the key file `DATA/secret.key`,
//! created with mode 0600 on the first start. Unlike the rest of the data
//! directory it cannot be rebuilt: without it the stored secrets are lost.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_store::{SecretKey, SecretKeyError};

/// The key file's name inside the data directory.
pub const SECRET_KEY_FILE: &str = "secret.key";
/// The environment variable that overrides the key file.
pub const SECRET_KEY_VAR: &str = "KILN_SECRET_KEY";

/// Where the server's key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// `KILN_SECRET_KEY`.
    Environment,
    /// The key file, read as it was.
    File(PathBuf),
    /// The key file, created just now: the operator should back it up.
    CreatedFile(PathBuf),
}

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretKeyFileError {
    /// Malformed text, or no randomness for a new key.
    #[error(transparent)]
    Key(#[from] SecretKeyError),
    #[error("cannot read the secret key file {}: {source}; restore it from your backup, or set KILN_SECRET_KEY", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the secret key file {}: {source}; check that the data directory is writable", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The server's key: from `from_env` (the value of `KILN_SECRET_KEY`, hex or
/// base64 of 32 bytes) when given and not empty, else from
/// `data_dir/secret.key`, which is created with a fresh random key when
/// missing. The key's recovery hint names both, so a mismatch tells the
/// operator what to restore.
pub fn load_or_create_secret_key(
    data_dir: &Path,
    from_env: Option<&str>,
) -> Result<(SecretKey, KeyOrigin), SecretKeyFileError> {
    let path = data_dir.join(SECRET_KEY_FILE);
    let hint = format!(
        "restore {} or set {SECRET_KEY_VAR} to the key they were stored with",
        path.display()
    );
    if let Some(text) = from_env.filter(|text| !text.trim().is_empty()) {
        let key = SecretKey::parse(text, SECRET_KEY_VAR)?;
        return Ok((key.with_recovery_hint(hint), KeyOrigin::Environment));
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            warn_if_readable_by_others(&path);
            let origin = format!("the secret key file {}", path.display());
            let key = SecretKey::parse(&text, &origin)?;
            Ok((key.with_recovery_hint(hint), KeyOrigin::File(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate()?;
            write_new_key_file(&path, &key).map_err(|source| SecretKeyFileError::Create {
                path: path.clone(),
                source,
            })?;
            Ok((key.with_recovery_hint(hint), KeyOrigin::CreatedFile(path)))
        }
        Err(source) => Err(SecretKeyFileError::Read { path, source }),
    }
}

/// Writes the key to a temporary file with mode 0600 first and links it into
/// place, so the key file is either absent or complete (a crash half-way
/// never leaves an empty key behind), and an existing file is never replaced.
fn write_new_key_file(path: &Path, key: &SecretKey) -> std::io::Result<()> {
    let temporary = path.with_extension(format!("key.new-{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        writeln!(file, "{}", key.to_hex())?;
        file.sync_all()?;
        std::fs::hard_link(&temporary, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    // The temporary name is this process's own; the link (if made) keeps
    // the key, so removing it loses nothing.
    let _ = std::fs::remove_file(&temporary);
    written
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the secret key file {} has mode {mode:o}: other users may read it; run chmod 600 on it",
                path.display()
            );
        }
    }
}

#[cfg(test)]
#[path = "secret_key_tests.rs"]
mod tests;
