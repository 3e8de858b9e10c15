//! Copy-on-write checkouts, in a process that entered its private mount
//! namespace before any thread started (as `kiln exec` and `kiln serve` do).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use kiln_workspace::{overlay, BaseCheckouts, Repo, Worktree};
use libtest_mimic::{Arguments, Failed, Trial};
use support::{git, plant_hostile_repositories, repo_with_one_commit, tripwire};

fn main() {
    let enabled = overlay::enable();
    let args = Arguments::from_args();
    let trials = vec![
        Trial::test("overlay_is_enabled_in_this_process", move || {
            enabled.clone().map_err(Failed::from)
        }),
        trial(
            "changes_are_committed_on_their_own_branch",
            changes_are_committed_on_their_own_branch,
        ),
        trial(
            "a_fresh_checkout_is_clean_to_git",
            a_fresh_checkout_is_clean_to_git,
        ),
        trial(
            "checkouts_of_one_commit_share_a_base_but_not_their_files",
            checkouts_of_one_commit_share_a_base_but_not_their_files,
        ),
        trial(
            "removing_leaves_the_branch_and_no_worktree_behind",
            removing_leaves_the_branch_and_no_worktree_behind,
        ),
        trial(
            "a_parked_checkout_comes_back_with_uncommitted_and_ignored_files",
            a_parked_checkout_comes_back_with_uncommitted_and_ignored_files,
        ),
        trial(
            "discard_clears_a_parked_checkout_for_a_fresh_one",
            discard_clears_a_parked_checkout_for_a_fresh_one,
        ),
        trial(
            "idle_bases_beyond_the_newest_two_are_deleted",
            idle_bases_beyond_the_newest_two_are_deleted,
        ),
        trial(
            "dropping_the_last_handle_unmounts_but_keeps_the_changes",
            dropping_the_last_handle_unmounts_but_keeps_the_changes,
        ),
        trial(
            "bases_deleted_by_hand_are_rebuilt",
            bases_deleted_by_hand_are_rebuilt,
        ),
        trial(
            "a_new_commit_takes_over_an_idle_base_rewriting_only_what_changed",
            a_new_commit_takes_over_an_idle_base_rewriting_only_what_changed,
        ),
        trial(
            "a_parked_checkout_is_a_worktree_plain_git_keeps_and_removes",
            a_parked_checkout_is_a_worktree_plain_git_keeps_and_removes,
        ),
        trial(
            "a_filesystem_that_cannot_hold_an_upper_layer_falls_back_before_building_a_base",
            a_filesystem_that_cannot_hold_an_upper_layer_falls_back_before_building_a_base,
        ),
        trial(
            "add_checkout_prefers_copy_on_write",
            add_checkout_prefers_copy_on_write,
        ),
        trial(
            "git_metadata_the_agent_planted_runs_nothing_on_the_host",
            git_metadata_the_agent_planted_runs_nothing_on_the_host,
        ),
        trial(
            "a_planted_git_file_never_makes_reattach_or_discard_delete_its_target",
            a_planted_git_file_never_makes_reattach_or_discard_delete_its_target,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

fn trial(name: &'static str, test: fn()) -> Trial {
    Trial::test(name, move || {
        test();
        Ok(())
    })
}

/// A repository with one commit, and a place for checkouts and their bases.
struct Setup {
    origin: tempfile::TempDir,
    repo: Repo,
    place: tempfile::TempDir,
    bases: BaseCheckouts,
}

impl Setup {
    fn new() -> Self {
        let origin = repo_with_one_commit();
        let (repo, place, bases) = Setup::around(&origin);
        Setup {
            origin,
            repo,
            place,
            bases,
        }
    }

    /// The repository at `origin`, a place and a base cache beside it.
    fn around(origin: &tempfile::TempDir) -> (Repo, tempfile::TempDir, BaseCheckouts) {
        let repo = Repo::discover(origin.path()).unwrap();
        let place = tempfile::tempdir().unwrap();
        let bases = BaseCheckouts::new(place.path().join("bases"));
        (repo, place, bases)
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn changes_are_committed_on_their_own_branch() {
    let origin = repo_with_one_commit();
    std::fs::write(origin.path().join("b.txt"), "bee\n").unwrap();
    git(origin.path(), &["add", "."]);
    git(origin.path(), &["commit", "-qm", "b"]);
    let (repo, place, bases) = Setup::around(&origin);
    let wt = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/1", &place.path().join("wt"))
        .unwrap();
    assert!(wt.is_copy_on_write());
    std::fs::write(wt.path().join("a.txt"), "two\n").unwrap();
    std::fs::write(wt.path().join("new.txt"), "fresh\n").unwrap();
    std::fs::remove_file(wt.path().join("b.txt")).unwrap();

    let diff = wt.diff().unwrap();
    assert!(diff.contains("-one") && diff.contains("+two"), "{diff}");
    assert!(diff.contains("+++ b/new.txt"), "{diff}");
    assert!(diff.contains("deleted file mode"), "{diff}");

    let commit = wt.commit_all("kiln: change").unwrap().expect("a commit");
    assert_eq!(repo.resolve("kiln/t/1").unwrap(), commit);
    let files = git(origin.path(), &["ls-tree", "--name-only", &commit]);
    assert_eq!(files.lines().collect::<Vec<_>>(), ["a.txt", "new.txt"]);
    // Neither the user's checkout nor the shared base saw any of it.
    assert_eq!(read(&origin.path().join("a.txt")), "one\n");
    let base_files = base_dirs(&bases);
    assert_eq!(base_files.len(), 1);
    assert_eq!(read(&base_files[0].join("a.txt")), "one\n");
    assert!(base_files[0].join("b.txt").exists());
    assert!(!base_files[0].join("new.txt").exists());
    wt.remove().unwrap();
}

fn a_fresh_checkout_is_clean_to_git() {
    let origin = repo_with_one_commit();
    for i in 0..50 {
        std::fs::write(origin.path().join(format!("f{i}.txt")), format!("{i}\n")).unwrap();
    }
    git(origin.path(), &["add", "."]);
    git(origin.path(), &["commit", "-qm", "many"]);
    let (repo, place, bases) = Setup::around(&origin);
    let wt = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/2", &place.path().join("wt"))
        .unwrap();
    assert_eq!(git(wt.path(), &["status", "--porcelain"]), "");
    assert_eq!(
        git(wt.path(), &["rev-parse", "--abbrev-ref", "HEAD"]).trim(),
        "kiln/t/2"
    );
    assert_eq!(wt.commit_all("nothing").unwrap(), None);
    wt.remove().unwrap();
}

fn checkouts_of_one_commit_share_a_base_but_not_their_files() {
    let Setup {
        origin: _origin,
        repo,
        place,
        bases,
    } = Setup::new();
    let first = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/a", &place.path().join("a"))
        .unwrap();
    let second = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/b", &place.path().join("b"))
        .unwrap();
    assert_eq!(base_dirs(&bases).len(), 1, "one base for one commit");
    std::fs::write(first.path().join("a.txt"), "first\n").unwrap();
    assert_eq!(read(&second.path().join("a.txt")), "one\n");
    std::fs::write(second.path().join("only-b.txt"), "b\n").unwrap();
    assert!(!first.path().join("only-b.txt").exists());
    let first_diff = first.diff().unwrap();
    assert!(first_diff.contains("+first") && !first_diff.contains("only-b"));
    first.remove().unwrap();
    second.remove().unwrap();
}

fn removing_leaves_the_branch_and_no_worktree_behind() {
    let Setup {
        origin,
        repo,
        place,
        bases,
    } = Setup::new();
    let dest = place.path().join("wt");
    let wt = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/3", &dest)
        .unwrap();
    std::fs::write(wt.path().join("a.txt"), "three\n").unwrap();
    wt.commit_all("three").unwrap().expect("a commit");
    wt.remove().unwrap();

    assert!(!dest.exists());
    assert!(!place.path().join("wt.layers").exists());
    let listed = git(origin.path(), &["worktree", "list", "--porcelain"]);
    assert!(!listed.contains(dest.to_str().unwrap()), "{listed}");
    // The branch is free to check out in the user's own worktree.
    git(origin.path(), &["checkout", "-q", "kiln/t/3"]);
    assert_eq!(read(&origin.path().join("a.txt")), "three\n");
}

fn a_parked_checkout_comes_back_with_uncommitted_and_ignored_files() {
    let origin = repo_with_one_commit();
    std::fs::write(origin.path().join(".gitignore"), "build/\n").unwrap();
    git(origin.path(), &["add", "."]);
    git(origin.path(), &["commit", "-qm", "ignore build"]);
    let (repo, place, bases) = Setup::around(&origin);
    let dest = place.path().join("wt");
    let wt = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/4", &dest)
        .unwrap();
    std::fs::write(dest.join("a.txt"), "committed\n").unwrap();
    wt.commit_all("first turn").unwrap().expect("a commit");
    std::fs::create_dir(dest.join("build")).unwrap();
    std::fs::write(dest.join("build/out.o"), "object\n").unwrap();
    std::fs::write(dest.join("notes.txt"), "uncommitted\n").unwrap();
    wt.park().unwrap();
    drop(wt);
    assert!(!dest.join("a.txt").exists(), "parked means unmounted");

    let wt = Worktree::reattach(&bases, &dest)
        .unwrap()
        .expect("the parked checkout");
    assert_eq!(wt.branch(), "kiln/t/4");
    assert_eq!(
        wt.path().canonicalize().unwrap(),
        dest.canonicalize().unwrap()
    );
    assert_eq!(read(&dest.join("a.txt")), "committed\n");
    assert_eq!(read(&dest.join("build/out.o")), "object\n");
    assert_eq!(read(&dest.join("notes.txt")), "uncommitted\n");
    assert_eq!(git(&dest, &["status", "--porcelain"]), "?? notes.txt\n");
    wt.remove().unwrap();
    assert!(Worktree::reattach(&bases, &dest).unwrap().is_none());
}

fn discard_clears_a_parked_checkout_for_a_fresh_one() {
    let Setup {
        origin,
        repo,
        place,
        bases,
    } = Setup::new();
    let dest = place.path().join("wt");
    let wt = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/5", &dest)
        .unwrap();
    std::fs::write(dest.join("a.txt"), "half done\n").unwrap();
    wt.park().unwrap();
    drop(wt);

    repo.discard_checkout(&dest).unwrap();
    git(origin.path(), &["branch", "-D", "kiln/t/5"]);
    let wt = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/5", &dest)
        .unwrap();
    assert_eq!(read(&dest.join("a.txt")), "one\n");
    wt.remove().unwrap();
}

fn idle_bases_beyond_the_newest_two_are_deleted() {
    let Setup {
        origin,
        repo,
        place,
        bases,
    } = Setup::new();
    let in_use = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/in-use", &place.path().join("u"))
        .unwrap();
    let mut commits = vec![repo.resolve("HEAD").unwrap()];
    // Four checkouts alive at once need four bases.
    let mut alive = Vec::new();
    for n in 1..=4 {
        std::fs::write(origin.path().join("a.txt"), format!("{n}\n")).unwrap();
        git(origin.path(), &["commit", "-qam", &n.to_string()]);
        commits.push(repo.resolve("HEAD").unwrap());
        let dest = place.path().join(format!("wt{n}"));
        alive.push(
            repo.add_overlay_worktree(&bases, "HEAD", &format!("kiln/t/{n}"), &dest)
                .unwrap(),
        );
    }
    assert_eq!(base_dirs(&bases).len(), 5);
    for wt in alive {
        wt.remove().unwrap();
    }
    // A fifth commit takes over the newest idle base (4's); of the idle
    // ones left (1, 2, 3) the two newest stay and 1 goes. 0 is in use.
    std::fs::write(origin.path().join("a.txt"), "5\n").unwrap();
    git(origin.path(), &["commit", "-qam", "5"]);
    commits.push(repo.resolve("HEAD").unwrap());
    let fifth = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/5", &place.path().join("wt5"))
        .unwrap();
    let kept: Vec<String> = base_dirs(&bases)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for commit in [&commits[0], &commits[2], &commits[3], &commits[5]] {
        assert!(kept.contains(commit), "{commit} kept: {kept:?}");
    }
    assert_eq!(kept.len(), 4, "{kept:?}");
    assert_eq!(read(&in_use.path().join("a.txt")), "one\n");
    assert_eq!(read(&fifth.path().join("a.txt")), "5\n");
    fifth.remove().unwrap();
    in_use.remove().unwrap();
}

fn a_new_commit_takes_over_an_idle_base_rewriting_only_what_changed() {
    use std::os::unix::fs::MetadataExt;
    let origin = repo_with_one_commit();
    std::fs::write(origin.path().join("same.txt"), "unchanged\n").unwrap();
    git(origin.path(), &["add", "."]);
    git(origin.path(), &["commit", "-qm", "same"]);
    let (repo, place, bases) = Setup::around(&origin);
    let first = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/r1", &place.path().join("a"))
        .unwrap();
    let old_base = base_dirs(&bases).remove(0);
    let inode = std::fs::metadata(old_base.join("same.txt")).unwrap().ino();
    first.remove().unwrap();

    std::fs::write(origin.path().join("a.txt"), "moved on\n").unwrap();
    git(origin.path(), &["commit", "-qam", "next"]);
    let head = repo.resolve("HEAD").unwrap();
    let second = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/r2", &place.path().join("b"))
        .unwrap();
    let now = base_dirs(&bases);
    assert_eq!(now.len(), 1, "the idle base was reused: {now:?}");
    assert!(now[0].ends_with(&head));
    assert_eq!(
        std::fs::metadata(now[0].join("same.txt")).unwrap().ino(),
        inode,
        "an unchanged file was not rewritten"
    );
    assert_eq!(read(&second.path().join("a.txt")), "moved on\n");
    assert_eq!(git(second.path(), &["status", "--porcelain"]), "");
    let listed = git(origin.path(), &["worktree", "list", "--porcelain"]);
    assert!(
        !listed.contains(old_base.to_str().unwrap()),
        "no record of the old path: {listed}"
    );
    second.remove().unwrap();
}

fn dropping_the_last_handle_unmounts_but_keeps_the_changes() {
    let Setup {
        origin: _origin,
        repo,
        place,
        bases,
    } = Setup::new();
    let dest = place.path().join("wt");
    let wt = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/7", &dest)
        .unwrap();
    let handle = wt.clone();
    std::fs::write(dest.join("a.txt"), "kept\n").unwrap();
    drop(wt);
    assert_eq!(
        read(&dest.join("a.txt")),
        "kept\n",
        "a clone still holds it"
    );
    drop(handle);
    assert!(
        !dest.join("a.txt").exists(),
        "unmounted with the last handle"
    );
    let wt = Worktree::reattach(&bases, &dest).unwrap().expect("parked");
    assert_eq!(read(&dest.join("a.txt")), "kept\n");
    wt.remove().unwrap();
}

fn bases_deleted_by_hand_are_rebuilt() {
    let Setup {
        origin: _origin,
        repo,
        place,
        bases,
    } = Setup::new();
    let first = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/8", &place.path().join("a"))
        .unwrap();
    first.remove().unwrap();
    std::fs::remove_dir_all(bases.root()).unwrap();
    let second = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/9", &place.path().join("b"))
        .unwrap();
    assert_eq!(read(&second.path().join("a.txt")), "one\n");
    second.remove().unwrap();
}

fn a_parked_checkout_is_a_worktree_plain_git_keeps_and_removes() {
    let Setup {
        origin,
        repo,
        place,
        bases,
    } = Setup::new();
    let dest = place.path().join("wt");
    let wt = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/t/10", &dest)
        .unwrap();
    std::fs::write(dest.join("a.txt"), "ten\n").unwrap();
    wt.commit_all("ten").unwrap().expect("a commit");
    wt.park().unwrap();
    drop(wt);

    git(origin.path(), &["worktree", "prune"]);
    let wt = Worktree::reattach(&bases, &dest)
        .unwrap()
        .expect("prune kept the parked checkout");
    assert_eq!(read(&dest.join("a.txt")), "ten\n");
    wt.park().unwrap();
    drop(wt);

    // Unmounted, its files look deleted to git: hence --force.
    git(
        origin.path(),
        &["worktree", "remove", "--force", dest.to_str().unwrap()],
    );
    git(origin.path(), &["branch", "-D", "kiln/t/10"]);
    assert!(!dest.exists());
    assert_eq!(
        kiln_workspace::sweep_orphan_layers(place.path()),
        [place.path().join("wt.layers")]
    );
    assert!(!place.path().join("wt.layers").exists());
}

fn a_filesystem_that_cannot_hold_an_upper_layer_falls_back_before_building_a_base() {
    // An overlay's upper layer cannot live on overlayfs: put the second
    // checkout inside the first one's mounted view.
    let outer = Setup::new();
    let host = outer
        .repo
        .add_overlay_worktree(
            &outer.bases,
            "HEAD",
            "kiln/t/host",
            &outer.place.path().join("host"),
        )
        .unwrap();
    let inner = Setup::new();
    let dest = host.path().join("nested").join("wt");
    let err = inner
        .repo
        .add_overlay_worktree(&inner.bases, "HEAD", "kiln/t/11", &dest)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot hold an overlay's upper layer"),
        "{err}"
    );
    assert!(
        !inner.bases.root().exists() || base_dirs(&inner.bases).is_empty(),
        "no base was built for a checkout that cannot be mounted"
    );
    let (wt, reason) = inner
        .repo
        .add_checkout(&inner.bases, "HEAD", "kiln/t/11", &dest)
        .unwrap();
    assert!(!wt.is_copy_on_write());
    assert!(reason.unwrap().contains("upper layer"));
    assert_eq!(read(&dest.join("a.txt")), "one\n");
    wt.remove().unwrap();
    host.remove().unwrap();
}

fn add_checkout_prefers_copy_on_write() {
    let Setup {
        origin: _origin,
        repo,
        place,
        bases,
    } = Setup::new();
    let (wt, fallback) = repo
        .add_checkout(&bases, "HEAD", "kiln/t/6", &place.path().join("wt"))
        .unwrap();
    assert_eq!(fallback, None);
    assert!(wt.is_copy_on_write());
    wt.remove().unwrap();
}

/// The complete base checkouts in the cache.
fn base_dirs(bases: &BaseCheckouts) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for repo_dir in std::fs::read_dir(bases.root()).unwrap() {
        let repo_dir = repo_dir.unwrap().path();
        for entry in std::fs::read_dir(&repo_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "ready") {
                found.push(path.with_extension(""));
            }
        }
    }
    found
}

fn git_metadata_the_agent_planted_runs_nothing_on_the_host() {
    let origin = repo_with_one_commit();
    let repo = Repo::discover(origin.path()).unwrap();
    let place = tempfile::tempdir().unwrap();
    let bases = BaseCheckouts::new(place.path().join("bases"));
    let wt = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/hostile/1", &place.path().join("wt"))
        .unwrap();
    let marker = place.path().join("host-code-ran");
    std::fs::write(wt.path().join("a.txt"), "the agent's edit\n").unwrap();
    let script = tripwire(wt.path(), "payload.sh", &marker);
    plant_hostile_repositories(wt.path(), &script);

    let diff = wt.diff();
    let commit = wt.commit_all("kiln: hostile");

    assert!(
        !marker.exists(),
        "kiln's git ran a command the agent configured in its checkout"
    );
    let (diff, commit) = (diff.unwrap(), commit.unwrap());
    assert!(diff.contains("+the agent's edit"), "{diff}");
    let commit = commit.expect("the agent's edit is committed");
    assert_eq!(repo.resolve("kiln/hostile/1").unwrap(), commit);
}

fn a_planted_git_file_never_makes_reattach_or_discard_delete_its_target() {
    let origin = repo_with_one_commit();
    let repo = Repo::discover(origin.path()).unwrap();
    let place = tempfile::tempdir().unwrap();
    let bases = BaseCheckouts::new(place.path().join("bases"));
    let dest = place.path().join("wt");
    let wt = repo
        .add_overlay_worktree(&bases, "HEAD", "kiln/hostile/2", &dest)
        .unwrap();
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("HEAD"), "ref: refs/heads/nothing\n").unwrap();
    std::fs::write(victim.path().join("precious"), "keep me\n").unwrap();
    std::fs::write(
        wt.path().join(".git"),
        format!("gitdir: {}\n", victim.path().display()),
    )
    .unwrap();
    wt.park().unwrap();
    drop(wt);

    // A follow-up tries to mount it again; failing that, the rerun discards it.
    if let Ok(Some(again)) = Worktree::reattach(&bases, &dest) {
        assert_eq!(again.branch(), "kiln/hostile/2");
        again.park().unwrap();
    }
    let _ = repo.discard_checkout(&dest);

    assert!(
        victim.path().join("precious").exists(),
        "the directory the planted .git file named was deleted"
    );
    assert!(!dest.exists(), "the checkout itself is gone");
}
