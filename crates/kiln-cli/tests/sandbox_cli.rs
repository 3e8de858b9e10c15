//! `kiln sandbox` through the binary: the escape suite as a user would run
//! it, with the exit statuses and messages a user sees.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Workspace {
    root: tempfile::TempDir,
    dir: PathBuf,
    home: PathBuf,
}

impl Workspace {
    fn new() -> Workspace {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("repo");
        let home = root.path().join("home");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::write(home.join(".ssh/id_ed25519"), "PLANTED-SSH-KEY\n").unwrap();
        std::fs::create_dir_all(home.join(".kiln")).unwrap();
        std::fs::write(
            home.join(".kiln/config.toml"),
            "model = \"PLANTED-KILN-KEY\"\n",
        )
        .unwrap();
        Workspace { root, dir, home }
    }

    /// `kiln sandbox ARGS` with the planted HOME and secrets in the environment.
    fn kiln(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        command
            .arg("sandbox")
            .arg("-C")
            .arg(&self.dir)
            .args(args)
            .env("HOME", &self.home)
            .env("OPENAI_API_KEY", "sk-planted-openai")
            .env("KILN_TEST_SECRET", "planted-env-secret")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.kiln(args).output().unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn both(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

#[test]
fn the_commands_own_exit_status_is_returned() {
    let ws = Workspace::new();
    let out = ws.run(&["--", "sh", "-c", "echo hello; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", both(&out));
    assert_eq!(text(&out.stdout), "hello\n");
}

#[test]
fn host_loopback_is_unreachable_unless_network_is_asked_for() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ws = Workspace::new();
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED");
    let out = ws.run(&["--", "bash", "-c", &script]);
    assert_ne!(out.status.code(), Some(0), "{}", both(&out));
    assert!(!text(&out.stdout).contains("CONNECTED"));

    // With --network the host is reachable at its own address; its
    // loopback stays out of reach.
    let public = TcpListener::bind("0.0.0.0:0").unwrap();
    let public_port = public.local_addr().unwrap().port();
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect("192.0.2.1:9").expect("a default route");
    let host = socket.local_addr().unwrap().ip();
    let script = format!(
        "(exec 3<>/dev/tcp/{host}/{public_port}) && echo HOST-ADDRESS; \
         (exec 3<>/dev/tcp/127.0.0.1/{public_port}) && echo HOST-LOOPBACK; true"
    );
    let out = ws.run(&["--network", "--", "bash", "-c", &script]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(text(&out.stdout).contains("HOST-ADDRESS"), "{}", both(&out));
    assert!(
        !text(&out.stdout).contains("HOST-LOOPBACK"),
        "{}",
        both(&out)
    );
}

#[test]
fn secrets_in_the_hosts_home_and_root_are_not_visible() {
    let ws = Workspace::new();
    let home = ws.home.display().to_string();
    let script = format!(
        "cat {home}/.ssh/id_ed25519; cat {home}/.kiln/config.toml; cat ~/.ssh/id_ed25519; \
         echo HOME=$HOME; ls -A ~; test -e /root/.bashrc && echo ROOT-BASHRC; \
         test -e /root/.npmrc && echo ROOT-NPMRC; true"
    );
    let out = ws.run(&["--", "sh", "-c", &script]);
    let all = both(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains("PLANTED-SSH-KEY"), "{all}");
    assert!(!all.contains("PLANTED-KILN-KEY"), "{all}");
    assert!(all.contains(&format!("HOME={home}")), "{all}");
    assert!(
        !all.contains("ROOT-BASHRC") && !all.contains("ROOT-NPMRC"),
        "{all}"
    );
}

#[test]
fn host_environment_variables_are_absent() {
    let ws = Workspace::new();
    let out = ws.run(&["--env", "TASK_VAR=visible", "--", "env"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(!stdout.contains("sk-planted-openai"), "{stdout}");
    assert!(!stdout.contains("planted-env-secret"), "{stdout}");
    assert!(stdout.contains("TASK_VAR=visible"), "{stdout}");
}

#[test]
fn writes_outside_the_workspace_and_through_symlinks_fail() {
    let ws = Workspace::new();
    let outside = ws.root.path().join("outside.txt");
    std::fs::write(&outside, "OUTSIDE-SECRET\n").unwrap();
    std::os::unix::fs::symlink(&outside, ws.dir.join("link")).unwrap();
    let script = format!(
        "cat link; echo overwrite > link; echo new > {}/new.txt; echo ok > inside.txt",
        ws.root.path().display()
    );
    let out = ws.run(&["--", "sh", "-c", &script]);
    assert!(!both(&out).contains("OUTSIDE-SECRET"), "{}", both(&out));
    assert_eq!(
        std::fs::read_to_string(&outside).unwrap(),
        "OUTSIDE-SECRET\n"
    );
    assert!(!ws.root.path().join("new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(ws.dir.join("inside.txt")).unwrap(),
        "ok\n"
    );
}

#[test]
fn ask_mode_refuses_writes() {
    let ws = Workspace::new();
    std::fs::write(ws.dir.join("file.txt"), "before\n").unwrap();
    let out = ws.run(&["--ask", "--", "sh", "-c", "echo after > file.txt"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        both(&out)
    );
    assert_eq!(
        std::fs::read_to_string(ws.dir.join("file.txt")).unwrap(),
        "before\n"
    );
}

#[test]
fn timeout_exits_124_and_kills_daemonised_children() {
    let ws = Workspace::new();
    let marker = format!("77{}.25", std::process::id());
    let script = format!(
        "setsid sleep {marker} >/dev/null 2>&1 </dev/null & nohup sleep {marker} >/dev/null 2>&1 & \
         echo started; sleep {marker}"
    );
    let child = ws
        .kiln(&["--timeout", "2", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The daemons exist while the command runs...
    assert!(
        wait_until(Duration::from_secs(10), || marker_processes(&marker) >= 3),
        "daemons never started"
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(124), "{}", both(&out));
    assert!(
        text(&out.stderr).contains("killed: timeout 2s"),
        "{}",
        both(&out)
    );
    // ...and none survives the timeout.
    assert!(
        wait_until(Duration::from_secs(5), || marker_processes(&marker) == 0),
        "daemonised children survived"
    );
}

#[test]
fn memory_limit_kill_is_named_on_stderr() {
    let ws = Workspace::new();
    let out = ws.run(&[
        "--memory",
        "64M",
        "--",
        "python3",
        "-c",
        "b = bytearray(1 << 30); print('allocated')",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", both(&out));
    assert!(
        text(&out.stderr).contains("killed: memory limit 64 MiB"),
        "{}",
        both(&out)
    );
    assert!(!text(&out.stdout).contains("allocated"));
}

#[test]
fn a_fork_bomb_is_contained_and_the_run_ends() {
    let ws = Workspace::new();
    let bomb = "import os\nwhile True:\n  try: os.fork()\n  except OSError: pass\n";
    let started = Instant::now();
    let out = ws.run(&[
        "--max-processes",
        "48",
        "--timeout",
        "3",
        "--",
        "python3",
        "-c",
        bomb,
    ]);
    assert_eq!(out.status.code(), Some(124), "{}", both(&out));
    assert!(
        text(&out.stderr).contains("limit reached: process limit 48"),
        "{}",
        both(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn printing_gigabytes_leaves_kilns_memory_flat() {
    let ws = Workspace::new();
    let mut child = ws
        .kiln(&["--", "head", "-c", "2G", "/dev/zero"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak_kib = 0u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        // VmHWM only grows, so the last reading before exit is the peak
        // up to that moment; sampling often keeps the gap small.
        if let Some(hwm) = vm_hwm_kib(pid) {
            peak_kib = peak_kib.max(hwm);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "2 GiB of output took over 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert!(peak_kib > 0, "no memory reading of the kiln process");
    assert!(
        peak_kib < 64 * 1024,
        "kiln's peak RSS was {peak_kib} KiB while 2 GiB went through it"
    );
}

#[test]
fn bad_options_name_the_problem_and_exit_125() {
    let ws = Workspace::new();
    let out = ws.run(&["--memory", "lots", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("\"lots\""), "{}", both(&out));
    let out = ws.run(&["--backend", "chroot", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("expected bwrap, podman or none"),
        "{}",
        both(&out)
    );
}

#[test]
fn backend_none_warns_loudly() {
    let ws = Workspace::new();
    let out = ws.run(&["--backend", "none", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("isolates NOTHING"),
        "{}",
        both(&out)
    );
}

/// Puts a host device node back to `crw-rw-rw- root root` if a test run
/// changed it (other processes on the machine need it writable).
struct RestoreDeviceNode(&'static str);

impl Drop for RestoreDeviceNode {
    fn drop(&mut self) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let Ok(meta) = std::fs::metadata(self.0) else {
            return;
        };
        if meta.mode() & 0o7777 != 0o666 {
            let _ = std::fs::set_permissions(self.0, std::fs::Permissions::from_mode(0o666));
        }
        if meta.uid() != 0 || meta.gid() != 0 {
            let _ = std::os::unix::fs::chown(self.0, Some(0), Some(0));
        }
    }
}

#[test]
fn the_hosts_device_nodes_cannot_be_changed_from_inside() {
    use std::os::unix::fs::MetadataExt;
    let ws = Workspace::new();
    let identity = |path: &str| {
        let meta = std::fs::metadata(path).unwrap();
        (
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.ctime(),
            meta.ctime_nsec(),
        )
    };
    let before = [identity("/dev/null"), identity("/dev/zero")];
    // A harmless probe first: the mode and owner each node already has
    // (the sandbox's uid 1000 is kiln's own uid on the host). Reaching the
    // host's node shows only in its ctime.
    let out = ws.run(&[
        "--",
        "sh",
        "-c",
        "chmod 0666 /dev/null /dev/zero; chown 1000:1000 /dev/null /dev/zero; true",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(
        [identity("/dev/null"), identity("/dev/zero")],
        before,
        "the sandbox reached the host's device nodes: {}",
        both(&out)
    );

    // The attack itself, only once the probe showed the host's nodes are
    // out of reach, with the nodes restored should it still get through.
    let _null = RestoreDeviceNode("/dev/null");
    let _zero = RestoreDeviceNode("/dev/zero");
    let out = ws.run(&[
        "--",
        "sh",
        "-c",
        "chmod 0600 /dev/null; chmod 0600 /dev/zero; chown 1:1 /dev/null; \
         echo x > /dev/null && head -c 4 /dev/zero | wc -c",
    ]);
    assert_eq!(
        [identity("/dev/null"), identity("/dev/zero")],
        before,
        "{}",
        both(&out)
    );
    // Inside, the nodes are still devices that work.
    assert_eq!(text(&out.stdout).trim(), "4", "{}", both(&out));
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// Live `sleep MARKER` processes.
fn marker_processes(marker: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let state = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = state
                .rsplit(") ")
                .next()
                .is_some_and(|s| s.starts_with('Z'));
            !zombie && cmdline == format!("sleep\0{marker}\0").as_bytes()
        })
        .count()
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", both(&out));
}

#[test]
fn repository_metadata_is_read_only_inside_the_sandbox() {
    let ws = Workspace::new();
    git(&ws.dir, &["init", "-q"]);
    std::fs::write(ws.dir.join("file.txt"), "one\n").unwrap();
    git(&ws.dir, &["add", "."]);
    git(&ws.dir, &["commit", "-q", "-m", "one"]);
    // A checked-out nested repository recorded as a gitlink: `git status`
    // in the outer repository runs git inside it.
    let nested = ws.dir.join("sub");
    std::fs::create_dir(&nested).unwrap();
    git(&nested, &["init", "-q"]);
    git(&nested, &["commit", "-q", "--allow-empty", "-m", "n"]);
    git(&ws.dir, &["add", "sub"]);
    git(&ws.dir, &["commit", "-q", "-m", "sub"]);
    let read = |path: &str| std::fs::read_to_string(ws.dir.join(path)).unwrap();
    let config = read(".git/config");
    let nested_config = read("sub/.git/config");

    for attack in [
        "echo '[core]\n\tfsmonitor = touch /tmp/pwned' >> .git/config",
        "git config core.fsmonitor 'touch PWNED'",
        "echo 'touch PWNED' > .git/hooks/pre-commit",
        "echo '[core]\n\tfsmonitor = touch ../PWNED' >> sub/.git/config",
        "mv .git .git-moved",
        "mkdir -p .kiln && echo 'model = \"x\"' > .kiln/config.toml",
    ] {
        let out = ws.run(&["--", "sh", "-c", attack]);
        assert_ne!(out.status.code(), Some(0), "{attack}: {}", both(&out));
        assert!(
            both(&out).contains("Read-only file system")
                || both(&out).contains("Device or resource busy"),
            "{attack}: {}",
            both(&out)
        );
    }
    assert_eq!(read(".git/config"), config);
    assert_eq!(read("sub/.git/config"), nested_config);
    assert!(!ws.dir.join(".git/hooks/pre-commit").exists());
    assert!(
        !ws.dir.join(".kiln").exists(),
        "not even the empty mount point is left"
    );

    let out = ws.run(&[
        "--",
        "sh",
        "-c",
        "echo two >> file.txt && git status --short",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(text(&out.stdout).contains(" M file.txt"), "{}", both(&out));
    assert_eq!(read("file.txt"), "one\ntwo\n");

    std::fs::create_dir(ws.dir.join(".kiln")).unwrap();
    std::fs::write(ws.dir.join(".kiln/config.toml"), "model = \"mine\"\n").unwrap();
    let out = ws.run(&[
        "--",
        "sh",
        "-c",
        "cat .kiln/config.toml; echo x >> .kiln/config.toml",
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        text(&out.stdout).contains("model = \"mine\""),
        "readable: {}",
        both(&out)
    );
    assert_eq!(read(".kiln/config.toml"), "model = \"mine\"\n");
}
