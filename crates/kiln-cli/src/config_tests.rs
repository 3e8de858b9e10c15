use super::*;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn project_config_overrides_home_and_c_overrides_both() {
    let home = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    write(&repo.path().join(".git/HEAD"), "ref: refs/heads/main\n");
    write(
        &home.path().join("config.toml"),
        "model = \"home-model\"\nmodel_provider = \"local\"\n[model_providers.local]\nbase_url = \"http://127.0.0.1:1/v1\"\nwire_api = \"chat\"\n[limits]\nmax_turns = 7\n",
    );
    write(
        &repo.path().join(".kiln/config.toml"),
        "model = \"repo-model\"\n[limits]\ncommand_timeout_secs = 30\n",
    );
    let sub = repo.path().join("src");
    std::fs::create_dir(&sub).unwrap();

    let config = load(home.path(), &sub, &["limits.max_turns=3".into()]).unwrap();
    assert_eq!(config.model, "repo-model");
    assert_eq!(config.limits.max_turns, Some(3));
    assert_eq!(config.limits.command_timeout_secs, Some(30));
    let local = config.provider().unwrap();
    assert_eq!(local.name, "local");
    assert_eq!(local.wire_api, kiln_model::WireApi::Chat);
    assert_eq!(local.base_url, "http://127.0.0.1:1/v1");
}

#[test]
fn bare_words_in_overrides_are_strings() {
    let home = tempfile::tempdir().unwrap();
    let config = load(
        home.path(),
        home.path(),
        &["model=o3".into(), "sandbox.network=true".into()],
    )
    .unwrap();
    assert_eq!(config.model, "o3");
    assert!(config.sandbox.network);
}

#[test]
fn broken_toml_names_the_file_and_line() {
    let home = tempfile::tempdir().unwrap();
    write(
        &home.path().join("config.toml"),
        "model = \"a\"\nmodel_provider = \n",
    );
    let err = format!("{:#}", load(home.path(), home.path(), &[]).unwrap_err());
    assert!(err.contains("config.toml is not valid TOML"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn a_wrong_type_names_the_key() {
    let home = tempfile::tempdir().unwrap();
    let err = format!(
        "{:#}",
        load(
            home.path(),
            home.path(),
            &["limits.max_turns=\"many\"".into()]
        )
        .unwrap_err()
    );
    assert!(err.contains("max_turns"), "{err}");
}

#[test]
fn an_override_without_equals_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let err = load(home.path(), home.path(), &["model".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("key=value"), "{err}");
}

#[test]
fn unknown_wire_api_is_refused() {
    let home = tempfile::tempdir().unwrap();
    write(
        &home.path().join("config.toml"),
        "[model_providers.x]\nbase_url = \"http://h/v1\"\nwire_api = \"grpc\"\n",
    );
    let err = format!("{:#}", load(home.path(), home.path(), &[]).unwrap_err());
    assert!(err.contains("grpc"), "{err}");
}

#[test]
fn an_unknown_provider_names_the_table_to_add() {
    let home = tempfile::tempdir().unwrap();
    let config = load(home.path(), home.path(), &["model_provider=nowhere".into()]).unwrap();
    let err = config.provider().unwrap_err().to_string();
    assert!(err.contains("[model_providers.nowhere]"), "{err}");
}

#[test]
fn builtin_ollama_needs_no_key() {
    let home = tempfile::tempdir().unwrap();
    let config = load(home.path(), home.path(), &["model_provider=ollama".into()]).unwrap();
    let provider = config.provider().unwrap();
    assert_eq!(provider.env_key, None);
    assert_eq!(provider.wire_api, kiln_model::WireApi::Chat);
}
