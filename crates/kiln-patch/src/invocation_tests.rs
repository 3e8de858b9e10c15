use super::*;

const PATCH: &str = "*** Begin Patch\n*** Delete File: a.txt\n*** End Patch\n";

#[test]
fn quoted_heredoc_is_recognised() {
    for opener in ["<<'EOF'", "<<EOF", "<<\"EOF\"", "<< 'PATCH'"] {
        let delimiter = opener
            .trim_start_matches("<<")
            .trim()
            .trim_matches(['\'', '"']);
        let script = format!("apply_patch {opener}\n{PATCH}{delimiter}\n");
        let found = patch_from_shell_command(&script).unwrap_or_else(|| panic!("{opener}"));
        assert_eq!(found.patch, PATCH);
        assert_eq!(found.workdir, None);
    }
}

#[test]
fn cd_prefix_gives_the_workdir() {
    let script = format!("cd 'my dir' && apply_patch <<'EOF'\n{PATCH}EOF");
    let found = patch_from_shell_command(&script).expect("recognised");
    assert_eq!(found.workdir.as_deref(), Some("my dir"));
    assert_eq!(found.patch, PATCH);
}

#[test]
fn quoted_argument_is_recognised() {
    let single = format!("apply_patch '{PATCH}'");
    assert_eq!(
        patch_from_shell_command(&single).expect("single").patch,
        PATCH
    );
    let double =
        "applypatch \"*** Begin Patch\n*** Add File: q\n+say \\\"hi\\\" \\$HOME\n*** End Patch\"";
    let found = patch_from_shell_command(double).expect("double");
    assert_eq!(
        found.patch,
        "*** Begin Patch\n*** Add File: q\n+say \"hi\" $HOME\n*** End Patch"
    );
}

#[test]
fn other_commands_are_not_recognised() {
    for script in [
        "ls -la",
        "apply_patcher <<'EOF'\nx\nEOF",
        "apply_patch <<'EOF'\nx\nEOF\nrm -rf /",
        "apply_patch < file.patch",
        "echo hi && apply_patch 'x'",
        "apply_patch 'unterminated",
        "apply_patch <<'EOF'\nno terminator\n",
        "cdx && apply_patch 'x'",
    ] {
        assert_eq!(patch_from_shell_command(script), None, "{script}");
    }
}

#[test]
fn dash_heredoc_strips_leading_tabs_of_the_terminator() {
    let script = format!("apply_patch <<-EOF\n{PATCH}\tEOF\n");
    assert_eq!(
        patch_from_shell_command(&script).expect("recognised").patch,
        PATCH
    );
}
