use super::*;

#[test]
fn mirror_names_are_stable_readable_and_distinct_per_location() {
    let a = mirror_name("https://example.com/org/app.git");
    assert!(a.starts_with("app-"), "{a}");
    assert_eq!(a, mirror_name("https://example.com/org/app.git"));
    assert_ne!(a, mirror_name("/srv/git/app"));
}

#[test]
fn owners_get_distinct_directory_names_made_of_hex_only() {
    let a = owner_dir_name("tok_a");
    assert_ne!(a, owner_dir_name("tok_b"));
    assert_eq!(a, owner_dir_name("tok_a"));
    assert!(owner_dir_name("../../etc")
        .bytes()
        .all(|b| b.is_ascii_hexdigit()));
}
