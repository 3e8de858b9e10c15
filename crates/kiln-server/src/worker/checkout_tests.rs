use super::*;

#[test]
fn numstat_counts_files_insertions_and_deletions_and_skips_binary_counts() {
    let stat = parse_numstat("3\t1\tcalc.py\n-\t-\tlogo.png\n10\t0\tnew.txt\n");
    assert_eq!(stat.files_changed, 3);
    assert_eq!(stat.insertions, 13);
    assert_eq!(stat.deletions, 1);
}

#[test]
fn mirror_names_are_stable_readable_and_distinct_per_location() {
    let a = mirror_name("https://example.com/org/app.git");
    assert!(a.starts_with("app-"), "{a}");
    assert_eq!(a, mirror_name("https://example.com/org/app.git"));
    assert_ne!(a, mirror_name("/srv/git/app"));
}
