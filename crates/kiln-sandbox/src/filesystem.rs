//! The filesystem a sandboxed command sees, as a list of mounts.
//!
//! Built from nothing up: an empty root, then the system directories
//! read-only, `/etc` with its secrets masked, a private `/tmp` and `$HOME`,
//! the toolchains on `PATH`, configured extras, and the workspace last so
//! that nothing shadows it. Whatever is not listed does not exist inside.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::policy::SandboxPolicy;

/// One step in building the sandbox's mount tree, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mount {
    ReadOnly {
        src: PathBuf,
        dst: PathBuf,
    },
    Writable {
        src: PathBuf,
        dst: PathBuf,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    /// Hide a file (bind `/dev/null` over it).
    HideFile(PathBuf),
    /// Hide a directory's contents (an empty read-only tmpfs over it).
    HideDir(PathBuf),
}

/// The mounts plus the variables that point toolchains at their roots.
#[derive(Debug, Clone, Default)]
pub(crate) struct FilesystemView {
    pub mounts: Vec<Mount>,
    pub toolchain_env: BTreeMap<String, String>,
}

/// System directories every toolchain needs, read-only.
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Secrets under `/etc`: password hashes, sudo rules, private keys,
/// credentials of system services.
const ETC_SECRET_FILES: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/security/opasswd",
    "/etc/krb5.keytab",
    "/etc/ppp/chap-secrets",
    "/etc/ppp/pap-secrets",
    "/etc/docker/key.json",
    "/etc/containers/auth.json",
];
const ETC_SECRET_DIRS: &[&str] = &[
    "/etc/sudoers.d",
    "/etc/ssl/private",
    "/etc/credstore",
    "/etc/credstore.encrypted",
    "/etc/NetworkManager/system-connections",
    "/etc/wpa_supplicant",
    "/etc/letsencrypt",
    "/etc/libvirt/secrets",
    "/etc/pki/private",
    "/etc/kiln",
];

/// Inputs from the host, separated out so the view can be tested.
pub(crate) struct HostFacts {
    /// kiln's own `PATH`.
    pub path: Option<String>,
    /// kiln's own `$HOME`.
    pub home: Option<PathBuf>,
    pub rustup_home: Option<PathBuf>,
}

impl HostFacts {
    pub fn current() -> HostFacts {
        HostFacts {
            path: std::env::var("PATH").ok(),
            home: std::env::var_os("HOME").map(PathBuf::from),
            rustup_home: std::env::var_os("RUSTUP_HOME").map(PathBuf::from),
        }
    }
}

/// Where the private home appears inside: the host's `$HOME` path (so paths
/// such as `~/.cargo/bin` on `PATH` keep their meaning), else `/home/kiln`.
pub(crate) fn sandbox_home(host: &HostFacts) -> PathBuf {
    host.home
        .clone()
        .filter(|h| h.is_absolute() && h.parent().is_some())
        .unwrap_or_else(|| PathBuf::from("/home/kiln"))
}

/// What differs between the setup phase and the agent phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Phase {
    pub network: bool,
    /// Network through slirp4netns in a private namespace (host loopback
    /// unreachable) rather than the host's namespace.
    pub user_mode_network: bool,
    pub read_only: bool,
    /// `.git`, submodules' `.git` and `.kiln/` read-only inside the
    /// writable workspace ([`crate::protected`]).
    pub protect_repository_metadata: bool,
}

impl Phase {
    /// The agent phase runs under the policy as given.
    pub fn agent(policy: &SandboxPolicy, slirp_available: bool) -> Phase {
        Phase {
            network: policy.network,
            user_mode_network: policy.network && slirp_available,
            read_only: policy.read_only,
            protect_repository_metadata: !policy.read_only,
        }
    }

    /// The setup phase installs dependencies: network, writable workspace.
    pub fn setup(slirp_available: bool) -> Phase {
        Phase {
            network: true,
            user_mode_network: slirp_available,
            read_only: false,
            // The environment's own script: `git submodule update` must work.
            protect_repository_metadata: false,
        }
    }
}

/// Paths generated per sandbox and bound over the host's versions.
#[derive(Clone)]
pub(crate) struct GeneratedFiles {
    pub passwd: PathBuf,
    pub group: PathBuf,
    /// Points at slirp4netns' DNS forwarder.
    pub resolv_conf: PathBuf,
    pub home: PathBuf,
    pub tmp: PathBuf,
}

pub(crate) fn build_view(
    policy: &SandboxPolicy,
    phase: Phase,
    workspace: &Path,
    host: &HostFacts,
    generated: &GeneratedFiles,
) -> FilesystemView {
    let mut view = FilesystemView::default();
    let mounts = &mut view.mounts;

    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::read_link(path) {
            // Merged /usr: /bin -> usr/bin stays a symlink inside.
            Ok(target) => mounts.push(Mount::Symlink {
                target,
                link: path.to_path_buf(),
            }),
            Err(_) if path.is_dir() => mounts.push(Mount::ReadOnly {
                src: path.to_path_buf(),
                dst: path.to_path_buf(),
            }),
            Err(_) => {}
        }
    }

    mounts.push(Mount::ReadOnly {
        src: "/etc".into(),
        dst: "/etc".into(),
    });
    for file in ETC_SECRET_FILES {
        if Path::new(file).is_file() {
            mounts.push(Mount::HideFile(file.into()));
        }
    }
    for dir in ETC_SECRET_DIRS {
        if Path::new(dir).is_dir() {
            mounts.push(Mount::HideDir(dir.into()));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/etc/ssh") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("ssh_host_") && !name.ends_with(".pub") {
                mounts.push(Mount::HideFile(entry.path()));
            }
        }
    }
    for (generated_file, dst) in [
        (&generated.passwd, "/etc/passwd"),
        (&generated.group, "/etc/group"),
    ] {
        mounts.push(Mount::ReadOnly {
            src: generated_file.clone(),
            dst: dst.into(),
        });
    }
    let resolv_is_file = std::fs::symlink_metadata("/etc/resolv.conf").is_ok_and(|m| m.is_file());
    if phase.user_mode_network && resolv_is_file {
        mounts.push(Mount::ReadOnly {
            src: generated.resolv_conf.clone(),
            dst: "/etc/resolv.conf".into(),
        });
    } else if phase.network {
        expose_resolver(mounts);
    }

    mounts.push(Mount::Writable {
        src: generated.tmp.clone(),
        dst: "/tmp".into(),
    });
    mounts.push(Mount::Writable {
        src: generated.home.clone(),
        dst: sandbox_home(host),
    });

    if policy.expose_path_dirs {
        expose_toolchains(&mut view, workspace, host);
    }
    for path in &policy.extra_read_only {
        view.mounts.push(Mount::ReadOnly {
            src: path.clone(),
            dst: path.clone(),
        });
    }
    for path in &policy.extra_writable {
        view.mounts.push(Mount::Writable {
            src: path.clone(),
            dst: path.clone(),
        });
    }
    view.mounts.push(if phase.read_only {
        Mount::ReadOnly {
            src: workspace.to_path_buf(),
            dst: workspace.to_path_buf(),
        }
    } else {
        Mount::Writable {
            src: workspace.to_path_buf(),
            dst: workspace.to_path_buf(),
        }
    });
    // After the workspace, so that these read-only mounts lie over it.
    if phase.protect_repository_metadata {
        let metadata = crate::protected::repository_metadata_mounts(workspace);
        view.mounts.extend(metadata);
    }
    view
}

/// With network, name resolution must work: `/etc/resolv.conf` is often a
/// symlink into `/run` (systemd-resolved, NetworkManager).
fn expose_resolver(mounts: &mut Vec<Mount>) {
    if let Ok(target) = std::fs::canonicalize("/etc/resolv.conf") {
        if !target.starts_with("/etc") {
            if let Some(dir) = target.parent() {
                mounts.push(Mount::ReadOnly {
                    src: dir.to_path_buf(),
                    dst: dir.to_path_buf(),
                });
            }
        }
    }
}

/// Is `path` at or under a home directory?
fn in_a_home(path: &Path, host: &HostFacts) -> bool {
    path.starts_with("/root")
        || path.starts_with("/home")
        || host.home.as_ref().is_some_and(|h| path.starts_with(h))
}

/// Is `path` a home directory itself, or `/`, `/home`: too broad to expose?
fn too_broad(path: &Path, host: &HostFacts) -> bool {
    let depth = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count();
    depth == 0
        || path == Path::new("/root")
        || path == Path::new("/home")
        || (path.starts_with("/home") && depth <= 2)
        || host.home.as_deref() == Some(path)
}

fn already_visible(path: &Path) -> bool {
    ["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64"]
        .iter()
        .any(|root| path.starts_with(root))
}

/// Expose each directory on `PATH` read-only, and for toolchains whose
/// binaries need more than their `bin` directory, the root they belong to:
///
/// - `…/.cargo/bin` (rustup proxies) → also `RUSTUP_HOME` (default `~/.rustup`);
/// - `…/.pyenv/shims`, `…/.pyenv/bin` → the `.pyenv` root;
/// - `…/.nvm/versions/node/vX/bin`, or `…/versions/<tool>/<v>/bin` in
///   general → the version's prefix (npm links into `lib/`);
/// - outside home directories, `<prefix>/bin` → `<prefix>` (`/opt/node/bin`).
///
/// Never a home directory as a whole, never an ancestor of the workspace
/// (that would expose neighbouring workspaces).
fn expose_toolchains(view: &mut FilesystemView, workspace: &Path, host: &HostFacts) {
    let Some(path_var) = host.path.as_deref() else {
        return;
    };
    let mut exposed: Vec<PathBuf> = Vec::new();
    let mut expose = |view: &mut FilesystemView, src: &Path, dst: &Path| {
        if too_broad(src, host) || workspace.starts_with(src) || already_visible(src) {
            return;
        }
        if exposed.iter().any(|e| dst.starts_with(e)) {
            return;
        }
        exposed.push(dst.to_path_buf());
        view.mounts.push(Mount::ReadOnly {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
        });
    };

    let mut roots: Vec<(PathBuf, PathBuf)> = Vec::new();
    for entry in std::env::split_paths(path_var) {
        if !entry.is_absolute() {
            continue;
        }
        let Ok(real) = std::fs::canonicalize(&entry) else {
            continue;
        };
        if !real.is_dir() {
            continue;
        }
        if let Some(root) = toolchain_root(&real, host) {
            if root.is_dir() {
                roots.push((root.clone(), root));
            }
        }
        if real.file_name().is_some_and(|n| n == "bin")
            && real.parent().is_some_and(|p| p.ends_with(".cargo"))
        {
            let rustup = host
                .rustup_home
                .clone()
                .or_else(|| real.parent()?.parent().map(|h| h.join(".rustup")));
            if let Some(rustup) = rustup.filter(|r| r.is_dir()) {
                view.toolchain_env
                    .insert("RUSTUP_HOME".into(), rustup.to_string_lossy().into_owned());
                roots.push((rustup.clone(), rustup));
            }
        }
        roots.push((real, entry));
    }
    // Roots first so that a PATH entry inside an exposed root is not
    // mounted a second time.
    roots.sort_by_key(|(_, dst)| dst.components().count());
    for (src, dst) in roots {
        if dst.file_name().is_some_and(|n| n == ".pyenv") {
            view.toolchain_env
                .insert("PYENV_ROOT".into(), dst.to_string_lossy().into_owned());
        }
        expose(view, &src, &dst);
    }
}

/// The root a PATH directory belongs to, when its binaries need more than
/// their own directory.
fn toolchain_root(dir: &Path, host: &HostFacts) -> Option<PathBuf> {
    let components: Vec<&std::ffi::OsStr> = dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    if let Some(i) = components.iter().position(|c| *c == ".pyenv") {
        return Some(
            components[..=i]
                .iter()
                .fold(PathBuf::from("/"), |p, c| p.join(c)),
        );
    }
    if let Some(i) = components.iter().rposition(|c| *c == "versions") {
        // versions/<tool>/<version>/bin → the version prefix.
        if components.len() == i + 4 && components[i + 3] == "bin" {
            return Some(
                components[..i + 3]
                    .iter()
                    .fold(PathBuf::from("/"), |p, c| p.join(c)),
            );
        }
    }
    let is_bin = dir.file_name().is_some_and(|n| n == "bin" || n == "sbin");
    if is_bin && !in_a_home(dir, host) {
        let prefix = dir.parent()?;
        if prefix.components().count() > 2 {
            return Some(prefix.to_path_buf());
        }
    }
    None
}

/// `/etc/passwd` and `/etc/group` for the sandbox: root, the sandbox user
/// (uid/gid 1000, home = the private home) and nobody, instead of the
/// host's account list.
pub(crate) fn account_files(home: &Path) -> (String, String) {
    let passwd = format!(
        "root:x:0:0:root:/root:/bin/sh\nkiln:x:1000:1000:kiln sandbox:{}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        home.display()
    );
    let group = "root:x:0:\nkiln:x:1000:\nnogroup:x:65534:\n".to_string();
    (passwd, group)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(path: &str) -> HostFacts {
        HostFacts {
            path: Some(path.into()),
            home: Some("/home/dev".into()),
            rustup_home: None,
        }
    }

    #[test]
    fn pyenv_shims_bring_the_whole_pyenv_root() {
        let root = toolchain_root(Path::new("/home/dev/.pyenv/shims"), &host("")).unwrap();
        assert_eq!(root, PathBuf::from("/home/dev/.pyenv"));
        let plugin = toolchain_root(
            Path::new("/home/dev/.pyenv/plugins/pyenv-virtualenv/shims"),
            &host(""),
        );
        assert_eq!(plugin.unwrap(), PathBuf::from("/home/dev/.pyenv"));
    }

    #[test]
    fn nvm_version_bin_brings_its_prefix() {
        let root = toolchain_root(
            Path::new("/home/dev/.nvm/versions/node/v20.1.0/bin"),
            &host(""),
        );
        assert_eq!(
            root.unwrap(),
            PathBuf::from("/home/dev/.nvm/versions/node/v20.1.0")
        );
    }

    #[test]
    fn bin_dirs_in_a_home_do_not_bring_the_home() {
        assert_eq!(
            toolchain_root(Path::new("/home/dev/.local/bin"), &host("")),
            None
        );
        assert_eq!(toolchain_root(Path::new("/home/dev/bin"), &host("")), None);
        assert_eq!(
            toolchain_root(Path::new("/opt/node/bin"), &host("")),
            Some(PathBuf::from("/opt/node"))
        );
        assert_eq!(toolchain_root(Path::new("/opt/bin"), &host("")), None);
    }

    #[test]
    fn home_directories_and_root_are_too_broad() {
        let h = host("");
        assert!(too_broad(Path::new("/"), &h));
        assert!(too_broad(Path::new("/root"), &h));
        assert!(too_broad(Path::new("/home/other"), &h));
        assert!(too_broad(Path::new("/home/dev"), &h));
        assert!(!too_broad(Path::new("/home/dev/.cargo/bin"), &h));
    }

    #[test]
    fn sandbox_user_has_the_private_home() {
        let (passwd, group) = account_files(Path::new("/home/dev"));
        assert!(passwd.contains("kiln:x:1000:1000:kiln sandbox:/home/dev:/bin/sh"));
        assert!(group.contains("kiln:x:1000:"));
    }
}
