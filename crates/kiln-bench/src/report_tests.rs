use super::{median, render_table, Row};

#[test]
fn median_of_odd_and_even_counts() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    assert_eq!(median(&[]), None);
}

#[test]
fn ratio_target_is_met_only_at_or_below_the_limit() {
    let met = Row::new("b", "wall", "ms")
        .kiln(Some(50.0))
        .codex(Some(100.0))
        .target_ratio(0.5);
    assert_eq!(met.ratio, Some(0.5));
    assert_eq!(met.target.as_ref().and_then(|t| t.met), Some(true));

    let missed = Row::new("b", "wall", "ms")
        .kiln(Some(51.0))
        .codex(Some(100.0))
        .target_ratio(0.5);
    assert_eq!(missed.target.as_ref().and_then(|t| t.met), Some(false));
}

#[test]
fn a_missing_side_leaves_the_target_undecided() {
    let row = Row::new("b", "wall", "ms")
        .kiln(Some(10.0))
        .target_ratio(0.5);
    assert_eq!(row.ratio, None);
    assert_eq!(row.target.as_ref().and_then(|t| t.met), None);
}

#[test]
fn table_marks_missed_targets_and_keeps_rows_aligned() {
    let rows = vec![
        Row::new("large", "start", "ms")
            .kiln(Some(1500.0))
            .target_below(200.0),
        Row::new("parallel", "attempts/min", "-").note("not available: kiln serve not built yet"),
    ];
    let table = render_table(&rows);
    assert!(table.contains("MISSED: < 200 ms"), "{table}");
    assert!(
        table.contains("not available: kiln serve not built yet"),
        "{table}"
    );
    let widths: Vec<usize> = table.lines().map(|l| l.chars().count()).collect();
    assert!(widths.windows(2).all(|w| w[0] == w[1]), "{table}");
}
