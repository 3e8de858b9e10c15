//! Token usage becomes money: each `usage` event carries the turn's and the
//! attempt's cost at the model's price, `attempt.finished` the attempt's,
//! and a budget in dollars ends the attempt cleanly before the next turn.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use kiln_model::{ModelPrice, PriceTable};
use kiln_protocol::{micros_from_usd, AttemptStatus, Event, EventKind, Mode, Usage};
use kiln_testkit::Turn;

/// $2 per million input tokens, $0.50 cached, $8 output.
const PRICE: ModelPrice = ModelPrice::new(2.0, 0.5, 8.0);

fn priced(harness: &mut Harness) {
    harness.config.prices = PriceTable::builtin()
        .with_overrides(&BTreeMap::from([("test-model".to_string(), PRICE)]))
        .unwrap();
}

fn usage(input: u64, cached: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        cached_input_tokens: cached,
        output_tokens: output,
    }
}

/// (turn cost, total cost) of each `usage` event, in micro-dollars.
fn usage_costs(events: &[Event]) -> Vec<(Option<u64>, Option<u64>)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Usage {
                turn_cost_usd,
                total_cost_usd,
                ..
            } => Some((
                turn_cost_usd.map(micros_from_usd),
                total_cost_usd.map(micros_from_usd),
            )),
            _ => None,
        })
        .collect()
}

fn finished_cost(events: &[Event]) -> Option<u64> {
    match &events.last().unwrap().kind {
        EventKind::AttemptFinished { cost_usd, .. } => cost_usd.map(micros_from_usd),
        other => panic!("the last event is {other:?}, not attempt.finished"),
    }
}

#[tokio::test]
async fn each_turn_and_the_attempt_cost_the_scripted_usage_at_the_models_price() {
    let turns = vec![
        // 10,000 in (none cached), 1,000 out: $0.02 + $0.008.
        Turn::shell("ls").with_usage(usage(10_000, 0, 1_000)),
        // 20,000 in of which 16,000 cached, 500 out: $0.008 + $0.008 + $0.004.
        Turn::message("Done.").with_usage(usage(20_000, 16_000, 500)),
    ];
    let mut harness = Harness::new(Mode::Code, turns).await;
    priced(&mut harness);
    let outcome = harness.run("Look around.").await;
    let events = harness.events();

    assert_eq!(outcome.status, AttemptStatus::Succeeded);
    assert_eq!(
        usage_costs(&events),
        vec![(Some(28_000), Some(28_000)), (Some(20_000), Some(48_000)),]
    );
    assert_eq!(finished_cost(&events), Some(48_000));
    assert_eq!(outcome.cost_usd.map(micros_from_usd), Some(48_000));
}

#[tokio::test]
async fn a_model_of_unknown_price_has_no_cost_rather_than_a_guess() {
    let turns = vec![Turn::message("Done.").with_usage(usage(10_000, 0, 1_000))];
    let harness = Harness::new(Mode::Code, turns).await;
    let outcome = harness.run("Say done.").await;
    let events = harness.events();

    assert_eq!(outcome.status, AttemptStatus::Succeeded);
    assert_eq!(usage_costs(&events), vec![(None, None)]);
    assert_eq!(finished_cost(&events), None);
    assert_eq!(outcome.cost_usd, None);
    // Nor does the JSON of the events claim a cost of 0.
    let json = serde_json::to_string(&events).unwrap();
    assert!(!json.contains("cost_usd"), "{json}");
}

#[tokio::test]
async fn a_budget_ends_the_attempt_before_the_turn_after_it_was_reached() {
    // Each turn costs $0.01 (5,000 in at $2/M); the budget is $0.025.
    let turns = (0..6)
        .map(|_| Turn::shell("ls").with_usage(usage(5_000, 0, 0)))
        .collect();
    let mut harness = Harness::new(Mode::Code, turns).await;
    priced(&mut harness);
    harness.config.limits.max_cost_usd = Some(0.025);
    let outcome = harness.run("Keep going.").await;
    let events = harness.events();

    assert_eq!(outcome.status, AttemptStatus::Failed);
    assert_eq!(
        outcome.reason.as_deref(),
        Some("budget $0.0250 reached ($0.0300 spent)")
    );
    assert_eq!(harness.server.turns_served(), 3);
    assert_eq!(outcome.cost_usd.map(micros_from_usd), Some(30_000));
    assert_eq!(finished_cost(&events), Some(30_000));
    // Every call made got its output: the history can be resumed.
    assert_eq!(tool_outputs(&events).len(), 3);
}

#[tokio::test]
async fn a_budget_on_a_model_of_unknown_price_stops_before_the_first_turn() {
    let turns = vec![Turn::message("Done.")];
    let mut harness = Harness::new(Mode::Code, turns).await;
    harness.config.limits.max_cost_usd = Some(1.0);
    let outcome = harness.run("Say done.").await;

    assert_eq!(outcome.status, AttemptStatus::Failed);
    let reason = outcome.reason.unwrap();
    assert!(
        reason.contains("price of model \"test-model\" is unknown")
            && reason.contains("[model_prices.\"test-model\"]"),
        "{reason}"
    );
    assert_eq!(harness.server.turns_served(), 0);
}

#[tokio::test]
async fn absurd_usage_from_a_provider_saturates_instead_of_crashing_or_wrapping() {
    // Each turn's numbers fit; their sum does not.
    let absurd = usage(u64::MAX - 10, 0, 10);
    let turns = vec![
        Turn::shell("ls").with_usage(absurd),
        // The reported count fills any context window: the history is summarised.
        Turn::message("Summary: listed the files.").with_usage(absurd),
        Turn::message("Done.").with_usage(absurd),
    ];
    let mut harness = Harness::new(Mode::Code, turns).await;
    priced(&mut harness);
    let outcome = harness.run("Look.").await;

    assert_eq!(outcome.status, AttemptStatus::Succeeded);
    assert_eq!(harness.server.turns_served(), 3);
    assert_eq!(outcome.usage.input_tokens, u64::MAX);
    assert_eq!(outcome.usage.total(), u64::MAX);
    // A wrapped sum would have cost next to nothing.
    assert!(outcome.cost_usd.unwrap() > 1e12, "{:?}", outcome.cost_usd);
}
