//! The apply_patch format that coding models write, applied safely: [`parse`] the
//! text, [`Patch::plan`] it against a directory (every chunk is located, loosely
//! where models are sloppy, before anything is written), then [`Plan::commit`] it
//! atomically: either every file changes or none does. Paths stay confined to the
//! root, CRLF files stay CRLF, binary files are refused, and the [`ApplyReport`]
//! carries a unified diff per change. [`apply`] does all three steps;
//! [`patch_from_shell_command`] recognises `apply_patch <<'EOF'` shell commands.
//! The format is documented in `docs/apply-patch.md`.
//!
//! ```
//! use kiln_protocol::FileChangeKind;
//!
//! let root = tempfile::tempdir()?;
//! std::fs::write(root.path().join("greeting.txt"), "hello\r\nworld\r\n")?;
//!
//! let report = kiln_patch::apply(
//!     root.path(),
//!     "*** Begin Patch\n\
//!      *** Update File: greeting.txt\n\
//!      @@\n\
//!      -hello\n\
//!      +hello, kiln\n\
//!      *** Add File: notes/todo.md\n\
//!      +- ship it\n\
//!      *** End Patch",
//! )?;
//!
//! assert_eq!(
//!     report.summary(),
//!     "Success. Updated the following files:\nA notes/todo.md\nM greeting.txt\n"
//! );
//! assert_eq!(report.changes[0].kind, FileChangeKind::Modify);
//! // The file keeps its CRLF line endings.
//! let updated = std::fs::read_to_string(root.path().join("greeting.txt"))?;
//! assert_eq!(updated, "hello, kiln\r\nworld\r\n");
//!
//! // A chunk that does not match leaves every file as it was.
//! let error = kiln_patch::apply(
//!     root.path(),
//!     "*** Begin Patch\n*** Delete File: notes/todo.md\n\
//!      *** Update File: greeting.txt\n@@\n-goodbye\n+bye\n*** End Patch",
//! )
//! .unwrap_err();
//! assert!(error.to_string().contains("re-read the file"));
//! assert!(root.path().join("notes/todo.md").exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod commit;
mod diff;
mod error;
mod invocation;
mod near_miss;
mod parser;
mod paths;
mod plan;
mod report;
mod seek;
mod text;
mod update;

use std::path::Path;

pub use error::{ChunkNotFound, Missing, PatchError};
pub use invocation::{patch_from_shell_command, ShellPatch};
pub use near_miss::NearMiss;
pub use parser::{parse, Chunk, ChunkLine, Hunk, ParseError, Patch};
pub use paths::Root;
pub use plan::Plan;
pub use report::ApplyReport;

/// Parses `patch_text` and applies it under `root`, atomically: on error no file
/// has changed. Patch paths are relative to `root` and must stay inside it.
pub fn apply(root: &Path, patch_text: &str) -> Result<ApplyReport, PatchError> {
    parse(patch_text)?.plan(root)?.commit()
}
