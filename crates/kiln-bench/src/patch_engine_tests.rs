use super::parse;

#[test]
fn reads_scenario_and_median_from_the_bench_output() {
    let out = "kiln-patch apply benchmark, median of 5 runs\n\n\
        10k-line file, 1,000 chunks                           0.5 MB  median       3.2 ms  (min      3.0, max      4.1)      160 MB/s\n";
    let rows = parse(out);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].metric, "10k-line file, 1,000 chunks");
    assert_eq!(rows[0].kiln, Some(3.2));
    assert!(rows[0].note.ends_with("160 MB/s"), "{}", rows[0].note);
}
