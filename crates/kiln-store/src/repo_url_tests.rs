use super::*;

fn credential(user: &str, password: Option<&str>) -> Option<RepoCredential> {
    Some(RepoCredential::new(user, password.map(str::to_string)))
}

#[test]
fn the_whole_user_information_of_an_https_url_is_the_credential() {
    let split_url = split("https://bot:tok3n@git.example.com:8443/team/app.git?x#y");
    assert_eq!(
        split_url.clean,
        "https://git.example.com:8443/team/app.git?x#y"
    );
    assert_eq!(split_url.credential, credential("bot", Some("tok3n")));

    // A token given as the user name is a credential too.
    let token_only = split("https://ghp_token@github.com/o/r.git");
    assert_eq!(token_only.clean, "https://github.com/o/r.git");
    assert_eq!(token_only.credential, credential("ghp_token", None));
}

#[test]
fn encoded_and_raw_special_characters_in_a_password_are_read_as_git_reads_them() {
    let split_url = split("https://me%40corp:p%3Ass@w@x%zz@host/r");
    assert_eq!(split_url.clean, "https://host/r");
    assert_eq!(
        split_url.credential,
        credential("me@corp", Some("p:ss@w@x%zz"))
    );
}

#[test]
fn ssh_keeps_its_login_name_and_loses_only_a_password() {
    for plain in [
        "ssh://git@host/r.git",
        "git@host:r.git",
        "/srv/git/app",
        "https://host/r.git",
        "file:///srv/git/app",
    ] {
        assert_eq!(split(plain).clean, plain);
        assert_eq!(split(plain).credential, None, "{plain}");
    }
    let with_password = split("ssh://git:pw1234@host/r.git");
    assert_eq!(with_password.clean, "ssh://git@host/r.git");
    assert_eq!(with_password.credential, credential("git", Some("pw1234")));
}

#[test]
fn a_new_credential_travels_only_over_https_or_to_this_machine() {
    for allowed in [
        "https://u:p@host/r",
        "http://u:p@127.0.0.1:8080/r",
        "http://u:p@[::1]:8080/r",
        "http://u:p@localhost/r",
        "http://host/r",
    ] {
        split(allowed).check_new().unwrap();
    }
    for (refused, says) in [
        ("http://u:p@git.example.com/r", "use an https URL"),
        ("ssh://git:pw@host/r", "kiln sends only over https"),
        ("git://u:pw@host/r", "kiln sends only over https"),
    ] {
        let err = split(refused).check_new().unwrap_err().to_string();
        assert!(err.contains(says), "{refused}: {err}");
        assert!(
            !err.contains(":p@") && !err.contains("pw"),
            "the error echoes the secret: {err}"
        );
    }
}

#[test]
fn the_basic_header_and_debug_output() {
    let cred = RepoCredential::new("Aladdin", Some("open sesame".into()));
    assert_eq!(
        cred.basic_authorization(),
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    );
    let shown = format!("{cred:?}");
    assert!(
        !shown.contains("Aladdin") && !shown.contains("sesame"),
        "{shown}"
    );
    assert_eq!(
        cred.redaction_values(),
        vec![
            ("REPO_URL_USERNAME", "Aladdin".to_string()),
            ("REPO_URL_PASSWORD", "open sesame".to_string())
        ]
    );
}
