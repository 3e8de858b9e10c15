use std::process::Command;
use std::time::Duration;

use super::run_measured;

#[test]
fn captures_stdout_lines_and_the_exit_code() {
    let dir = std::env::temp_dir().join(format!("kiln-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = Command::new("sh");
    command.args(["-c", "echo first; echo second; exit 3"]);
    let measured =
        run_measured(command, &dir.join("stderr"), Duration::from_secs(30), true).unwrap();
    let texts: Vec<&str> = measured.stdout.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["first", "second"]);
    assert_eq!(measured.exit_code, Some(3));
    assert!(!measured.succeeded());
    assert!(measured.max_single_rss_bytes > 0);
    assert!(measured.first_line_with(&["sec"]).is_some());
}

#[test]
fn a_hung_process_tree_is_killed_at_the_timeout() {
    let dir = std::env::temp_dir().join(format!("kiln-bench-hang-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = Command::new("sh");
    // The child sleeps in a grandchild that holds stdout open: the whole
    // group has to die for the measurement to return.
    command.args(["-c", "sleep 600 & wait"]);
    let measured = run_measured(
        command,
        &dir.join("stderr"),
        Duration::from_millis(300),
        false,
    )
    .unwrap();
    assert!(measured.timed_out);
    assert_eq!(measured.exit_code, None);
}
