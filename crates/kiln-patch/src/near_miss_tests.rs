use super::*;

#[test]
fn window_with_most_loosely_equal_lines_is_chosen() {
    let file = [
        "a",
        "fn main() {",
        "    println!(\u{201C}hi\u{201D});",
        "}",
        "z",
    ];
    let near =
        find_near_miss(&file, &["fn main() {", "println!(\"hello\");", "}"]).expect("a near miss");
    assert_eq!(near.first_line, 2);
    assert_eq!(near.lines[0], "fn main() {");
    assert_eq!((near.matching, near.expected), (2, 3));
}

#[test]
fn similar_single_line_is_found_when_no_line_is_equal() {
    let file = ["alpha", "let total = compute(x);", "omega"];
    let near = find_near_miss(&file, &["let totl = compute(x)"]).expect("a near miss");
    assert_eq!(near.first_line, 2);
    assert_eq!(near.matching, 0);
}

#[test]
fn loose_hash_ignores_whitespace_and_unicode_punctuation() {
    let mut scratch = String::new();
    let plain = loose_hash("say \"it's - ok\"", &mut scratch);
    let fancy = loose_hash(
        "  say \u{201C}it\u{2019}s \u{2014} ok\u{201D}\t",
        &mut scratch,
    );
    assert_eq!(plain, fancy);
    assert_ne!(plain, loose_hash("say \"it's - okay\"", &mut scratch));
}

#[test]
fn nothing_similar_gives_no_near_miss() {
    let file = ["alpha", "beta"];
    assert_eq!(find_near_miss(&file, &["completely different text"]), None);
}
