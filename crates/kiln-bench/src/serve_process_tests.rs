use super::*;

#[test]
fn cpu_ticks_add_own_and_reaped_children_time() {
    // A command name with spaces and a parenthesis must not shift the fields.
    let stat = "4242 (kiln serve) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                120 30 7 3 20 0 9 0 100 1000 200";
    assert_eq!(cpu_ticks_from_stat(stat), Some(120 + 30 + 7 + 3));
    assert_eq!(cpu_ticks_from_stat("4242 (kiln) S 1 2"), None);
}

#[test]
fn status_values_are_read_in_kib() {
    let status = "Name:\tkiln\nVmPeak:\t  900 kB\nVmHWM:\t   28672 kB\nVmRSS:\t   20000 kB\n";
    assert_eq!(status_kib(status, "VmHWM"), Some(28672));
    assert_eq!(status_kib(status, "VmSwap"), None);
}

#[test]
fn this_processs_own_peak_memory_is_readable() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(status_kib(&status, "VmHWM").unwrap() > 0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    assert!(cpu_ticks_from_stat(&stat).is_some());
}

/// A stand-in for `kiln` at `dir/fake-kiln` running `body` as a shell script.
fn fake_kiln(dir: &RunDir, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.root.join("fake-kiln");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn test_dir(name: &str) -> RunDir {
    let work = std::env::temp_dir().join(format!("kiln-bench-serve-{}", std::process::id()));
    RunDir::fresh(&work, name).unwrap()
}

/// Whether `pid` is gone or only a zombie waiting to be reaped.
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_server_that_exits_before_listening_is_reported_with_its_stderr() {
    let dir = test_dir("exits-early");
    let kiln = fake_kiln(
        &dir,
        "echo 'kiln: no model provider configured' >&2\nexit 3",
    );
    let err = ServeProcess::start(&kiln, &dir, "http://127.0.0.1:9/v1", "t", 4, true)
        .err()
        .unwrap();
    let message = format!("{err:#}");
    assert!(message.contains("exited before listening"), "{message}");
    assert!(
        message.contains("no model provider configured"),
        "{message}"
    );
    dir.remove();
}

#[test]
fn the_printed_address_is_used_and_stopping_ends_everything_the_server_started() {
    let dir = test_dir("stops");
    // Like kiln serve: checks its arguments, prints its address, keeps a
    // child of its own running (a sandbox), and waits.
    let kiln = fake_kiln(
        &dir,
        r#"[ "$1 $2 $3 $4 $5" = "serve --addr 127.0.0.1:0 --max-parallel 7" ] || exit 9
[ "$KILN_ADMIN_TOKEN" = "token-for-the-test" ] || exit 8
sleep 300 &
echo $! > "$KILN_HOME/child.pid"
echo "kiln serve: listening on http://127.0.0.1:4321 (data in $7)"
exec sleep 300"#,
    );
    let mut server = ServeProcess::start(
        &kiln,
        &dir,
        "http://127.0.0.1:9/v1",
        "token-for-the-test",
        7,
        true,
    )
    .unwrap();
    assert_eq!(server.url, "http://127.0.0.1:4321");
    assert!(!server.has_exited());
    let pid_file = dir.home().join("child.pid");
    // The script writes the pid before it prints the address, which start waited for.
    let child: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let memory = server.stop_sampling();
    assert!(memory.server_hwm_bytes.unwrap() > 0);
    assert!(server.cpu_time().is_some());
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_dead(child) {
        assert!(
            Instant::now() < deadline,
            "the server's child {child} outlived it"
        );
        thread::sleep(Duration::from_millis(10));
    }
    dir.remove();
}
