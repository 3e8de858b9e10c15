//! What a model's tokens cost, and what one turn's or one attempt's usage
//! costs at that price. The table of known prices is kiln-model's
//! (`kiln_model::PriceTable`); the price itself crosses the worker protocol
//! (a remote worker enforces budgets with the server's price), so it lives here.

use serde::{Deserialize, Serialize};

use crate::Usage;

/// A model's price in US dollars per million tokens, as providers publish it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Input tokens that were not served from the provider's prompt cache.
    pub input: f64,
    /// Input tokens served from the prompt cache. `None`: the provider gives
    /// no discount, and they cost `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    pub output: f64,
}

impl ModelPrice {
    pub const fn new(input: f64, cached_input: f64, output: f64) -> Self {
        ModelPrice {
            input,
            cached_input: Some(cached_input),
            output,
        }
    }

    /// The cost of `usage` in US dollars. `input_tokens` counts the cached
    /// ones too (as OpenAI's Responses and Chat Completions APIs report
    /// them): those are billed at the cached rate, the rest at the input
    /// rate. A count of cached tokens above the input count (a server's
    /// error) is capped at it, so no token is billed twice.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let uncached = usage.input_tokens - cached;
        let cached_rate = self.cached_input.unwrap_or(self.input);
        (uncached as f64 * self.input
            + cached as f64 * cached_rate
            + usage.output_tokens as f64 * self.output)
            / 1_000_000.0
    }

    /// Why this price cannot be used, if it cannot: every rate must be a
    /// finite number of dollars, zero or more.
    pub fn problem(&self) -> Option<String> {
        let rates = [
            ("input", Some(self.input)),
            ("cached_input", self.cached_input),
            ("output", Some(self.output)),
        ];
        rates.into_iter().find_map(|(name, rate)| match rate {
            Some(rate) if !rate.is_finite() || rate < 0.0 => Some(format!(
                "{name} = {rate} is not a price: give US dollars per million tokens, 0 or more \
                 (e.g. 1.25)"
            )),
            _ => None,
        })
    }
}

/// Dollars for people: cents for amounts of a dollar or more, four
/// decimals below (an attempt often costs a fraction of a cent).
pub fn format_usd(usd: f64) -> String {
    if usd >= 1.0 {
        format!("${usd:.2}")
    } else {
        format!("${usd:.4}")
    }
}
