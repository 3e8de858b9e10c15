//! The scenario suite under `tests/fixtures/scenarios`, shared by the library test
//! (`kiln-patch/tests/scenarios.rs`) and the CLI test (`kiln-cli/tests/apply_patch_cli.rs`).
//!
//! A case is a folder holding `input/` (the tree before), `patch.txt`, `expected/`
//! (the tree after; equal to `input/` for a failing case) and optionally:
//! `expected_error.txt` (a substring the error must contain; the case must fail),
//! `expected_summary.txt` (the exact success summary), and `symlinks.txt`
//! (`link -> target` lines; symlinks are created at run time in both trees because
//! git cannot hold them portably), and `expected_symlinks.txt` (the expected tree's
//! symlinks, when the patch changes them). Each run also gets a directory `outside/` beside
//! the root holding `sentinel.txt`, so escapes have something to reach; it must
//! stay untouched.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub const SENTINEL: &str = "sentinel\n";

pub struct Scenario {
    pub name: String,
    pub dir: PathBuf,
    pub patch: String,
    pub expected_error: Option<String>,
    pub expected_summary: Option<String>,
    symlinks: Vec<(String, String)>,
    /// Symlinks of the expected tree, when they differ from the input's.
    expected_symlinks: Option<Vec<(String, String)>>,
}

/// A scenario's input copied to a fresh temporary root.
pub struct Prepared {
    _temp: tempfile::TempDir,
    pub root: PathBuf,
    pub outside: PathBuf,
}

pub fn fixtures_dir() -> PathBuf {
    // Both crates using this module live side by side under `crates/`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kiln-patch/tests/fixtures/scenarios")
        .canonicalize()
        .expect("scenario fixtures directory exists")
}

/// Every scenario, sorted by name.
pub fn load_all() -> Vec<Scenario> {
    let mut scenarios: Vec<Scenario> = fs::read_dir(fixtures_dir())
        .expect("list scenarios")
        .map(|entry| entry.expect("scenario entry").path())
        .filter(|path| path.is_dir())
        .map(|dir| Scenario::load(&dir))
        .collect();
    scenarios.sort_by(|a, b| a.name.cmp(&b.name));
    scenarios
}

impl Scenario {
    fn load(dir: &Path) -> Scenario {
        let read_optional = |name: &str| fs::read_to_string(dir.join(name)).ok();
        let parse_links = |text: String| -> Vec<(String, String)> {
            text.lines()
                .filter(|line| !line.trim().is_empty())
                .map(|line| {
                    let (link, target) = line
                        .split_once(" -> ")
                        .unwrap_or_else(|| panic!("bad symlink line `{line}` in {dir:?}"));
                    (link.trim().to_string(), target.trim().to_string())
                })
                .collect()
        };
        let symlinks = read_optional("symlinks.txt")
            .map(parse_links)
            .unwrap_or_default();
        let expected_symlinks = read_optional("expected_symlinks.txt").map(parse_links);
        Scenario {
            name: dir
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned(),
            patch: fs::read_to_string(dir.join("patch.txt")).expect("patch.txt"),
            expected_error: read_optional("expected_error.txt")
                .map(|text| text.trim_end_matches('\n').to_string()),
            expected_summary: read_optional("expected_summary.txt"),
            dir: dir.to_path_buf(),
            symlinks,
            expected_symlinks,
        }
    }

    /// Copies `input/` to a new temporary root (with the declared symlinks).
    pub fn prepare(&self) -> Prepared {
        let temp = tempfile::tempdir().expect("temp dir");
        let root = temp.path().join("root");
        let outside = temp.path().join("outside");
        fs::create_dir(&outside).expect("outside dir");
        fs::write(outside.join("sentinel.txt"), SENTINEL).expect("sentinel");
        self.materialise("input", &root, &self.symlinks);
        Prepared {
            _temp: temp,
            root,
            outside,
        }
    }

    fn materialise(&self, tree: &str, destination: &Path, symlinks: &[(String, String)]) {
        fs::create_dir_all(destination).expect("create root");
        let source = self.dir.join(tree);
        if source.exists() {
            copy_tree(&source, destination);
        }
        for (link, target) in symlinks {
            std::os::unix::fs::symlink(target, destination.join(link)).expect("create symlink");
        }
    }

    /// Checks the tree under `prepared` against `expected/` (with the symlinks) and
    /// the outside directory against its sentinel. Returns a description of the
    /// first difference.
    pub fn check_tree(&self, prepared: &Prepared) -> Result<(), String> {
        let expected_root = tempfile::tempdir().expect("temp dir");
        let symlinks = self.expected_symlinks.as_ref().unwrap_or(&self.symlinks);
        self.materialise("expected", expected_root.path(), symlinks);
        let expected = snapshot(expected_root.path());
        let actual = snapshot(&prepared.root);
        compare(&expected, &actual).map_err(|problem| format!("tree differs: {problem}"))?;
        let outside = snapshot(&prepared.outside);
        let mut sentinel_only = BTreeMap::new();
        sentinel_only.insert(
            "sentinel.txt".to_string(),
            Node::File(SENTINEL.as_bytes().to_vec()),
        );
        compare(&sentinel_only, &outside)
            .map_err(|problem| format!("directory outside the root changed: {problem}"))
    }
}

#[derive(Debug, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
}

fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut nodes = BTreeMap::new();
    walk(root, root, &mut nodes);
    nodes
}

fn walk(root: &Path, dir: &Path, nodes: &mut BTreeMap<String, Node>) {
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        let relative = path
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        let metadata = fs::symlink_metadata(&path).expect("metadata");
        if metadata.file_type().is_symlink() {
            nodes.insert(relative, Node::Symlink(fs::read_link(&path).expect("link")));
        } else if metadata.is_dir() {
            nodes.insert(relative, Node::Dir);
            walk(root, &path, nodes);
        } else {
            nodes.insert(relative, Node::File(fs::read(&path).expect("read file")));
        }
    }
}

fn compare(
    expected: &BTreeMap<String, Node>,
    actual: &BTreeMap<String, Node>,
) -> Result<(), String> {
    for (path, node) in expected {
        match actual.get(path) {
            None => return Err(format!("`{path}` is missing")),
            Some(found) if found != node => {
                return Err(format!(
                    "`{path}` differs\n  expected: {}\n  actual:   {}",
                    describe(node),
                    describe(found)
                ))
            }
            Some(_) => {}
        }
    }
    match actual.keys().find(|path| !expected.contains_key(*path)) {
        Some(extra) => Err(format!(
            "unexpected `{extra}`: {}",
            describe(&actual[extra])
        )),
        None => Ok(()),
    }
}

fn describe(node: &Node) -> String {
    match node {
        Node::Dir => "a directory".into(),
        Node::Symlink(target) => format!("a symlink to {target:?}"),
        Node::File(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
    }
}

fn copy_tree(source: &Path, destination: &Path) {
    for entry in fs::read_dir(source).expect("read fixture dir") {
        let path = entry.expect("fixture entry").path();
        let target = destination.join(path.file_name().expect("name"));
        if path.is_dir() {
            fs::create_dir_all(&target).expect("create dir");
            copy_tree(&path, &target);
        } else {
            fs::copy(&path, &target).expect("copy fixture file");
        }
    }
}
