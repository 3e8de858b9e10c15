use std::fs;
use std::path::{Path, PathBuf};

use super::*;

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join(".git/HEAD"), "ref: refs/heads/main\n");
    dir
}

fn discover(cwd: &Path) -> Instructions {
    discover_instructions(cwd, &InstructionsConfig::default(), None)
}

#[test]
fn override_file_beats_agents_md_in_the_same_directory() {
    let repo = repo();
    write(&repo.path().join("AGENTS.md"), "plain rules\n");
    write(&repo.path().join("AGENTS.override.md"), "override rules\n");
    let found = discover(repo.path());
    assert_eq!(found.sources, vec![repo.path().join("AGENTS.override.md")]);
    assert!(found.text.contains("override rules"));
    assert!(!found.text.contains("plain rules"));
}

#[test]
fn fallback_names_are_used_only_when_no_agents_md_exists() {
    let repo = repo();
    write(&repo.path().join("CLAUDE.md"), "claude rules\n");
    write(&repo.path().join("sub/AGENTS.md"), "sub agents\n");
    write(&repo.path().join("sub/CLAUDE.md"), "sub claude\n");
    let config = InstructionsConfig {
        fallback_filenames: vec!["CLAUDE.md".into()],
        ..InstructionsConfig::default()
    };
    let found = discover_instructions(&repo.path().join("sub"), &config, None);
    assert_eq!(
        found.sources,
        vec![
            repo.path().join("CLAUDE.md"),
            repo.path().join("sub/AGENTS.md")
        ]
    );
    assert!(!found.text.contains("sub claude"));
}

#[test]
fn nested_files_are_concatenated_from_root_to_cwd() {
    let repo = repo();
    write(&repo.path().join("AGENTS.md"), "root rules\n");
    write(&repo.path().join("a/AGENTS.md"), "a rules\n");
    write(&repo.path().join("a/b/c/AGENTS.md"), "c rules\n");
    write(&repo.path().join("other/AGENTS.md"), "unrelated\n");
    let found = discover(&repo.path().join("a/b/c"));
    assert_eq!(found.sources.len(), 3);
    let root = found.text.find("root rules").unwrap();
    let a = found.text.find("a rules").unwrap();
    let c = found.text.find("c rules").unwrap();
    assert!(root < a && a < c, "order was wrong:\n{}", found.text);
    assert!(!found.text.contains("unrelated"));
    assert!(found.warnings.is_empty());
}

#[test]
fn the_text_names_each_source_path() {
    let repo = repo();
    write(&repo.path().join("AGENTS.md"), "run make test\n");
    let found = discover(repo.path());
    let path = repo.path().join("AGENTS.md");
    assert!(found
        .text
        .contains(&format!("<instructions source=\"{}\">", path.display())));
}

#[test]
fn budget_cuts_the_crossing_file_and_drops_later_ones_with_warnings() {
    let repo = repo();
    write(&repo.path().join("AGENTS.md"), &"root line\n".repeat(5)); // 50 bytes
    write(
        &repo.path().join("a/AGENTS.md"),
        &"second line\n".repeat(10),
    ); // 120 bytes
    write(&repo.path().join("a/b/AGENTS.md"), "deepest\n");
    let config = InstructionsConfig {
        byte_budget: 80,
        ..InstructionsConfig::default()
    };
    let found = discover_instructions(&repo.path().join("a/b"), &config, None);
    assert_eq!(
        found.sources,
        vec![
            repo.path().join("AGENTS.md"),
            repo.path().join("a/AGENTS.md")
        ]
    );
    // 30 bytes remain for the second file: two whole lines of 12 bytes.
    assert_eq!(found.text.matches("second line").count(), 2);
    assert!(!found.text.contains("deepest"));
    assert_eq!(found.warnings.len(), 2, "{:?}", found.warnings);
    assert!(found.warnings[0].contains("cut to 24 of its 120 bytes"));
    assert!(found.warnings[1].contains("a/b/AGENTS.md"));
}

#[test]
fn a_directory_named_agents_md_is_skipped() {
    let repo = repo();
    fs::create_dir(repo.path().join("AGENTS.md")).unwrap();
    write(&repo.path().join("AGENTS.md/inner.md"), "not guidance\n");
    let found = discover(repo.path());
    assert!(found.sources.is_empty());
    assert!(found.text.is_empty());

    let config = InstructionsConfig {
        fallback_filenames: vec!["GUIDE.md".into()],
        ..InstructionsConfig::default()
    };
    write(&repo.path().join("GUIDE.md"), "guide\n");
    let found = discover_instructions(repo.path(), &config, None);
    assert_eq!(found.sources, vec![repo.path().join("GUIDE.md")]);
}

#[test]
fn global_file_comes_before_the_project_files() {
    let repo = repo();
    let home = tempfile::tempdir().unwrap();
    write(&home.path().join("AGENTS.md"), "global rules\n");
    write(&repo.path().join("AGENTS.md"), "project rules\n");
    let found = discover_instructions(
        repo.path(),
        &InstructionsConfig::default(),
        Some(home.path()),
    );
    assert_eq!(
        found.sources,
        vec![home.path().join("AGENTS.md"), repo.path().join("AGENTS.md")]
    );
    assert!(found.text.find("global rules") < found.text.find("project rules"));
}

#[test]
fn global_override_beats_global_agents_md() {
    let home = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    write(&home.path().join("AGENTS.md"), "global\n");
    write(&home.path().join("AGENTS.override.md"), "global override\n");
    let found = discover_instructions(
        cwd.path(),
        &InstructionsConfig::default(),
        Some(home.path()),
    );
    assert_eq!(found.sources, vec![home.path().join("AGENTS.override.md")]);
}

#[test]
fn an_empty_git_directory_is_not_a_repository() {
    let outer = tempfile::tempdir().unwrap();
    fs::create_dir(outer.path().join(".git")).unwrap();
    write(&outer.path().join("AGENTS.md"), "outer\n");
    write(&outer.path().join("inner/AGENTS.md"), "inner\n");
    let found = discover(&outer.path().join("inner"));
    assert_eq!(found.sources, vec![outer.path().join("inner/AGENTS.md")]);
}

#[test]
fn without_git_only_cwd_is_searched() {
    let outer = tempfile::tempdir().unwrap();
    write(&outer.path().join("AGENTS.md"), "outer\n");
    write(&outer.path().join("inner/AGENTS.md"), "inner\n");
    let found = discover(&outer.path().join("inner"));
    assert_eq!(found.sources, vec![outer.path().join("inner/AGENTS.md")]);
}

#[test]
fn a_git_file_marks_the_root_like_a_git_directory() {
    let outer = tempfile::tempdir().unwrap();
    write(&outer.path().join("AGENTS.md"), "outside the repo\n");
    write(&outer.path().join("wt/.git"), "gitdir: /elsewhere\n");
    write(&outer.path().join("wt/AGENTS.md"), "worktree rules\n");
    write(&outer.path().join("wt/src/AGENTS.md"), "src rules\n");
    let found = discover(&outer.path().join("wt/src"));
    assert_eq!(
        found.sources,
        vec![
            outer.path().join("wt/AGENTS.md"),
            outer.path().join("wt/src/AGENTS.md")
        ]
    );
    assert_eq!(
        project_root(&outer.path().join("wt/src")),
        Some(outer.path().join("wt"))
    );
}

#[test]
fn empty_files_are_not_sources() {
    let repo = repo();
    write(&repo.path().join("AGENTS.md"), "  \n");
    let found = discover(repo.path());
    assert!(found.sources.is_empty());
}

/// A repository `repo` beside a directory `outside` that holds what the
/// repository must not reach.
fn repo_beside_outside() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let outside = dir.path().join("outside");
    write(&repo.join(".git/HEAD"), "ref: refs/heads/main\n");
    write(&outside.join("secret"), "OUTSIDE-SECRET\n");
    write(&outside.join("AGENTS.md"), "OUTSIDE-SECRET\n");
    (dir, repo, outside)
}

fn assert_nothing_read(found: &Instructions, secret: &str) {
    assert!(found.sources.is_empty(), "{:?}", found.sources);
    assert!(!found.text.contains(secret), "{}", found.text);
    assert!(
        found.warnings.iter().any(|w| w.contains("was left out")),
        "{:?}",
        found.warnings
    );
}

#[test]
fn agents_md_linked_to_proc_self_environ_does_not_reach_the_model() {
    let (_dir, repo, _) = repo_beside_outside();
    std::os::unix::fs::symlink("/proc/self/environ", repo.join("AGENTS.md")).unwrap();
    let found = discover(&repo);
    assert_nothing_read(&found, "PATH=");
    assert!(found.warnings[0].contains("leads outside the workspace"));
}

#[test]
fn agents_md_linked_out_of_the_repository_is_not_read() {
    let (_dir, repo, _) = repo_beside_outside();
    fs::create_dir_all(repo.join("sub")).unwrap();
    std::os::unix::fs::symlink("../../outside/secret", repo.join("sub/AGENTS.md")).unwrap();
    assert_nothing_read(&discover(&repo.join("sub")), "OUTSIDE-SECRET");
}

#[test]
fn agents_md_in_a_directory_linked_out_of_the_repository_is_not_read() {
    let (_dir, repo, outside) = repo_beside_outside();
    std::os::unix::fs::symlink(&outside, repo.join("docs")).unwrap();
    assert_nothing_read(&discover(&repo.join("docs")), "OUTSIDE-SECRET");
}

#[test]
fn agents_md_that_is_a_fifo_is_passed_over_without_blocking() {
    let (_dir, repo, _) = repo_beside_outside();
    nix::unistd::mkfifo(
        &repo.join("AGENTS.md"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let found = discover(&repo);
    assert!(found.sources.is_empty());
    assert!(found.warnings[0].contains("a FIFO"), "{:?}", found.warnings);
}

/// 1 TiB costs nothing as a sparse file; read whole, it cannot fit in memory
/// (the allocation is refused), so only a bounded read gets its guidance in.
#[test]
fn a_sparse_1_tib_agents_md_is_read_only_up_to_the_budget() {
    let (_dir, repo, _) = repo_beside_outside();
    let huge = fs::File::create(repo.join("AGENTS.md")).unwrap();
    huge.set_len(1 << 40).unwrap();
    let found = discover(&repo);
    assert_eq!(found.sources, vec![repo.join("AGENTS.md")]);
    assert!(found.text.len() < 2 * InstructionsConfig::default().byte_budget);
    assert!(
        found.warnings[0].contains("of its 1099511627776 bytes"),
        "{:?}",
        found.warnings
    );
}

#[test]
fn agents_md_linked_to_another_file_of_the_repository_is_read() {
    let (_dir, repo, _) = repo_beside_outside();
    write(&repo.join("docs/agents.md"), "linked rules\n");
    std::os::unix::fs::symlink("docs/agents.md", repo.join("AGENTS.md")).unwrap();
    let found = discover(&repo);
    assert_eq!(found.sources, vec![repo.join("AGENTS.md")]);
    assert!(found.text.contains("linked rules"));
}

#[test]
fn a_huge_git_file_is_recognised_from_its_first_bytes() {
    let (_dir, repo, _) = repo_beside_outside();
    let inner = repo.join("inner");
    write(&inner.join(".git"), "gitdir: /elsewhere\n");
    fs::OpenOptions::new()
        .write(true)
        .open(inner.join(".git"))
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    assert_eq!(project_root(&inner), Some(inner.clone()));
}

#[test]
fn nothing_above_a_known_workspace_root_is_read_even_without_its_git_marker() {
    // A checkout inside a directory that is itself a repository, whose `.git`
    // file the agent deleted: the project root found from it is the parent.
    let (_dir, parent, _) = repo_beside_outside();
    write(&parent.join("AGENTS.md"), "PARENT-RULES\n");
    write(&parent.join("secret.key"), "PARENT-SECRET\n");
    let checkout = parent.join("checkouts/t1");
    fs::create_dir_all(&checkout).unwrap();
    std::os::unix::fs::symlink("../../secret.key", checkout.join("AGENTS.md")).unwrap();
    assert_eq!(project_root(&checkout), Some(parent.clone()));

    let found = discover_instructions_within(
        &checkout,
        Some(&checkout),
        &InstructionsConfig::default(),
        None,
    );
    assert!(!found.text.contains("PARENT-"), "{}", found.text);
    assert!(found.sources.is_empty(), "{:?}", found.sources);
    assert!(found.warnings[0].contains("leads outside the workspace"));
}
