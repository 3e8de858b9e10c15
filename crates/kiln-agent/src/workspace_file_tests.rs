use std::os::unix::fs::symlink;

use super::*;

/// A workspace inside a temporary directory, with a sibling `outside`
/// directory holding a secret the workspace must not reach.
struct Fixture {
    _dir: tempfile::TempDir,
    workspace: PathBuf,
    outside: PathBuf,
}

const SECRET: &str = "host-secret-7d1f";

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("repo");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(workspace.join("docs")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), SECRET).unwrap();
    std::fs::write(outside.join("AGENTS.md"), SECRET).unwrap();
    Fixture {
        _dir: dir,
        workspace,
        outside,
    }
}

#[test]
fn a_regular_file_is_read_whole_when_under_the_cap() {
    let f = fixture();
    std::fs::write(f.workspace.join("docs/guide.md"), "hello\n").unwrap();
    let file = read(&f.workspace, "docs/guide.md", 100).unwrap();
    assert_eq!(file.bytes, b"hello\n");
    assert_eq!(file.size, 6);
    assert!(!file.is_truncated());
}

#[test]
fn a_symlink_to_proc_self_environ_is_refused() {
    let f = fixture();
    symlink("/proc/self/environ", f.workspace.join("AGENTS.md")).unwrap();
    let err = read(&f.workspace, "AGENTS.md", 1 << 20).unwrap_err();
    assert!(
        matches!(err, WorkspaceFileError::OutsideWorkspace { .. }),
        "{err}"
    );
}

#[test]
fn a_relative_symlink_out_of_the_workspace_is_refused() {
    let f = fixture();
    symlink("../outside/secret", f.workspace.join("AGENTS.md")).unwrap();
    let err = read(&f.workspace, "AGENTS.md", 1 << 20).unwrap_err();
    assert!(
        matches!(err, WorkspaceFileError::OutsideWorkspace { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("leads outside the workspace"));
}

#[test]
fn a_file_under_a_directory_symlink_out_of_the_workspace_is_refused() {
    let f = fixture();
    std::fs::remove_dir(f.workspace.join("docs")).unwrap();
    symlink(&f.outside, f.workspace.join("docs")).unwrap();
    let err = read(&f.workspace, "docs/AGENTS.md", 1 << 20).unwrap_err();
    assert!(
        matches!(err, WorkspaceFileError::OutsideWorkspace { .. }),
        "{err}"
    );
}

#[test]
fn a_dangling_symlink_out_of_the_workspace_is_refused_not_missing() {
    let f = fixture();
    symlink("/nonexistent/kiln/secret", f.workspace.join("AGENTS.md")).unwrap();
    let err = read(&f.workspace, "AGENTS.md", 1 << 20).unwrap_err();
    assert!(
        matches!(err, WorkspaceFileError::OutsideWorkspace { .. }),
        "{err}"
    );
}

#[test]
fn dot_dot_out_of_the_workspace_is_refused() {
    let f = fixture();
    let err = read(&f.workspace, "../outside/secret", 1 << 20).unwrap_err();
    assert!(
        matches!(err, WorkspaceFileError::OutsideWorkspace { .. }),
        "{err}"
    );
}

#[test]
fn an_absolute_path_is_refused() {
    let f = fixture();
    let secret = f.outside.join("secret");
    let err = read(&f.workspace, &secret, 1 << 20).unwrap_err();
    assert!(
        matches!(err, WorkspaceFileError::NotRelative { .. }),
        "{err}"
    );
}

#[test]
fn a_fifo_is_refused_without_waiting_for_a_writer() {
    let f = fixture();
    let fifo = f.workspace.join("AGENTS.md");
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
    let err = read(&f.workspace, "AGENTS.md", 1 << 20).unwrap_err();
    assert!(
        matches!(
            err,
            WorkspaceFileError::NotRegularFile { kind: "a FIFO", .. }
        ),
        "{err}"
    );
}

#[test]
fn a_device_is_refused_even_through_a_symlink_inside() {
    let f = fixture();
    symlink("/dev/zero", f.workspace.join("zero")).unwrap();
    assert!(read(&f.workspace, "zero", 16).is_err());
}

#[test]
fn a_directory_is_not_a_file() {
    let f = fixture();
    let err = read(&f.workspace, "docs", 16).unwrap_err();
    assert!(
        matches!(
            err,
            WorkspaceFileError::NotRegularFile {
                kind: "a directory",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_huge_sparse_file_is_read_only_up_to_the_cap() {
    let f = fixture();
    let huge = File::create(f.workspace.join("AGENTS.md")).unwrap();
    huge.set_len(1 << 30).unwrap();
    let file = read(&f.workspace, "AGENTS.md", 4096).unwrap();
    assert_eq!(file.bytes.len(), 4096);
    assert_eq!(file.size, 1 << 30);
    assert!(file.is_truncated());
}

#[test]
fn a_symlink_that_stays_inside_the_workspace_is_followed() {
    let f = fixture();
    std::fs::write(f.workspace.join("docs/guide.md"), "inside\n").unwrap();
    symlink("docs/guide.md", f.workspace.join("AGENTS.md")).unwrap();
    symlink("docs", f.workspace.join("manual")).unwrap();
    assert_eq!(
        read(&f.workspace, "AGENTS.md", 100).unwrap().bytes,
        b"inside\n"
    );
    assert_eq!(
        read(&f.workspace, "manual/guide.md", 100).unwrap().bytes,
        b"inside\n"
    );
}

#[test]
fn a_missing_file_is_not_found() {
    let f = fixture();
    let err = read(&f.workspace, "AGENTS.md", 100).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}
