use std::collections::BTreeMap;

use kiln_protocol::{micros_from_usd, Usage};

use super::*;

fn usage(input: u64, cached: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        cached_input_tokens: cached,
        output_tokens: output,
    }
}

#[test]
fn a_known_model_costs_its_published_price() {
    let price = PriceTable::builtin().price("gpt-4.1").unwrap();
    assert_eq!(price, ModelPrice::new(2.0, 0.5, 8.0));
    // 10k in at $2/M and 1k out at $8/M: $0.02 + $0.008.
    assert_eq!(
        micros_from_usd(price.cost(&usage(10_000, 0, 1_000))),
        28_000
    );
}

#[test]
fn a_dated_snapshot_costs_what_its_model_costs() {
    let table = PriceTable::builtin();
    assert_eq!(table.price("gpt-4.1-2025-04-14"), table.price("gpt-4.1"));
    assert_eq!(table.price("o3-2025-04-16"), table.price("o3"));
    assert_eq!(
        table.price("gpt-4.1-mini-2025-04-14"),
        table.price("gpt-4.1-mini")
    );
}

#[test]
fn a_longer_model_name_never_takes_a_shorter_ones_price() {
    let table = PriceTable::builtin();
    assert_eq!(
        table.price("gpt-4.1-mini").unwrap(),
        ModelPrice::new(0.40, 0.10, 1.60)
    );
    assert_eq!(
        table.price("gpt-4o-mini").unwrap(),
        ModelPrice::new(0.15, 0.075, 0.60)
    );
    // Neither a made-up variant nor a name merely starting like a known one.
    assert_eq!(table.price("gpt-4.1-turbo"), None);
    assert_eq!(table.price("gpt-4.1-2025-04"), None);
    assert_eq!(table.price("gpt-4.1-2025-04-14-extra"), None);
    assert_eq!(table.price("gpt-5x"), None);
    assert_eq!(table.price("my-gpt-4o"), None);
    assert_eq!(table.price("GPT-4O"), None);
}

#[test]
fn a_snapshot_with_its_own_price_keeps_it() {
    let table = PriceTable::builtin();
    let launch = table.price("gpt-4o-2024-05-13").unwrap();
    assert_eq!((launch.input, launch.output), (5.0, 15.0));
    assert_eq!(table.price("gpt-4o-2024-08-06"), table.price("gpt-4o"));
}

#[test]
fn cached_input_is_billed_at_the_cached_rate_and_the_rest_at_the_input_rate() {
    let price = PriceTable::builtin().price("gpt-5").unwrap();
    // 100k input of which 80k cached: 20k × $1.25/M + 80k × $0.125/M + 2k × $10/M
    // = $0.025 + $0.01 + $0.02.
    assert_eq!(
        micros_from_usd(price.cost(&usage(100_000, 80_000, 2_000))),
        55_000
    );
}

#[test]
fn cached_tokens_above_the_input_count_are_not_billed_twice() {
    let price = ModelPrice::new(1.0, 0.5, 2.0);
    assert_eq!(micros_from_usd(price.cost(&usage(1_000, 5_000, 0))), 500);
}

#[test]
fn without_a_cached_rate_cached_tokens_cost_the_input_rate() {
    let price = PriceTable::builtin().price("gpt-4o-2024-05-13").unwrap();
    assert_eq!(micros_from_usd(price.cost(&usage(1_000, 1_000, 0))), 5_000);
}

#[test]
fn an_unknown_model_has_no_price() {
    assert_eq!(PriceTable::builtin().price("qwen3-coder:30b"), None);
    assert_eq!(PriceTable::builtin().price(""), None);
}

#[test]
fn the_users_price_wins_over_the_built_in_one_and_covers_snapshots() {
    let mine = ModelPrice::new(3.0, 1.0, 9.0);
    let table = PriceTable::builtin()
        .with_overrides(&BTreeMap::from([
            ("gpt-4.1".to_string(), mine),
            ("qwen3-coder".to_string(), ModelPrice::new(0.0, 0.0, 0.0)),
        ]))
        .unwrap();
    assert_eq!(table.price("gpt-4.1"), Some(mine));
    assert_eq!(table.price("gpt-4.1-2025-04-14"), Some(mine));
    // Other models keep their built-in price.
    assert_eq!(
        table.price("gpt-4.1-mini"),
        PriceTable::builtin().price("gpt-4.1-mini")
    );
    assert_eq!(
        table.price("qwen3-coder").unwrap().cost(&usage(9, 0, 9)),
        0.0
    );
}

#[test]
fn a_price_that_is_not_a_price_is_refused_by_name() {
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let err = PriceTable::builtin()
            .with_overrides(&BTreeMap::from([(
                "gpt-5".to_string(),
                ModelPrice::new(1.0, 0.1, bad),
            )]))
            .unwrap_err();
        assert_eq!(err.model, "gpt-5");
        assert!(err.to_string().contains("output ="), "{err}");
    }
}

#[test]
fn a_workers_table_knows_only_the_servers_price() {
    let price = ModelPrice::new(1.0, 0.1, 2.0);
    assert_eq!(
        PriceTable::only("gpt-5", Some(price)).price("gpt-5"),
        Some(price)
    );
    // Not the built-in price of another model, and no price when the server had none.
    assert_eq!(PriceTable::only("gpt-5", Some(price)).price("o3"), None);
    assert_eq!(PriceTable::only("gpt-5", None).price("gpt-5"), None);
}

#[test]
fn dollars_read_as_people_write_them() {
    assert_eq!(kiln_protocol::format_usd(0.012_345), "$0.0123");
    assert_eq!(kiln_protocol::format_usd(2.5), "$2.50");
}
