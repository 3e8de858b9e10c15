//! What a model's tokens cost: a built-in table of OpenAI's published
//! prices, overridable per model by the user (`[model_prices."NAME"]` in
//! `~/.kiln/config.toml`). A model the table does not know has no price:
//! kiln shows no cost for it rather than a guess.
//!
//! ```
//! use kiln_model::PriceTable;
//! use kiln_protocol::Usage;
//!
//! let table = PriceTable::builtin();
//! // A dated snapshot costs what its model costs.
//! let price = table.price("gpt-4.1-2025-04-14").unwrap();
//! let usage = Usage { input_tokens: 1_000_000, cached_input_tokens: 0, output_tokens: 0 };
//! assert_eq!(price.cost(&usage), 2.0);
//! // A model kiln knows no price of costs nothing it could show.
//! assert!(table.price("qwen3-coder").is_none());
//! ```

use std::collections::BTreeMap;

pub use kiln_protocol::ModelPrice;

/// OpenAI's standard-tier prices, US dollars per million tokens (input,
/// cached input, output), from <https://platform.openai.com/docs/pricing>
/// as published in 2025 (gpt-5 family, gpt-4.1, o3 after its June 2025
/// reduction) and checked again on 2026-12-02 against copies of that page
/// (see docs/cost.md). Prices change: users override them in config.
const BUILTIN: &[(&str, ModelPrice)] = &[
    ("gpt-5", ModelPrice::new(1.25, 0.125, 10.0)),
    ("gpt-5-codex", ModelPrice::new(1.25, 0.125, 10.0)),
    ("gpt-5-chat-latest", ModelPrice::new(1.25, 0.125, 10.0)),
    ("gpt-5-mini", ModelPrice::new(0.25, 0.025, 2.0)),
    ("gpt-5-nano", ModelPrice::new(0.05, 0.005, 0.40)),
    ("gpt-4.1", ModelPrice::new(2.0, 0.50, 8.0)),
    ("gpt-4.1-mini", ModelPrice::new(0.40, 0.10, 1.60)),
    ("gpt-4.1-nano", ModelPrice::new(0.10, 0.025, 0.40)),
    ("gpt-4o", ModelPrice::new(2.50, 1.25, 10.0)),
    // The first gpt-4o snapshot kept its launch price and has no cache discount.
    (
        "gpt-4o-2024-05-13",
        ModelPrice {
            input: 5.0,
            cached_input: None,
            output: 15.0,
        },
    ),
    ("gpt-4o-mini", ModelPrice::new(0.15, 0.075, 0.60)),
    ("o1", ModelPrice::new(15.0, 7.50, 60.0)),
    ("o3", ModelPrice::new(2.0, 0.50, 8.0)),
    ("o3-mini", ModelPrice::new(1.10, 0.55, 4.40)),
    ("o4-mini", ModelPrice::new(1.10, 0.275, 4.40)),
    ("codex-mini-latest", ModelPrice::new(1.50, 0.375, 6.0)),
];

/// A price given for a model that cannot be one (negative, not a number).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("[model_prices.{model:?}]: {problem}")]
pub struct InvalidPrice {
    pub model: String,
    pub problem: String,
}

/// Prices by model name: the user's own first, then the built-in ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    builtin: bool,
    overrides: BTreeMap<String, ModelPrice>,
}

impl PriceTable {
    /// The built-in prices of well-known models.
    pub fn builtin() -> Self {
        PriceTable {
            builtin: true,
            overrides: BTreeMap::new(),
        }
    }

    /// A table that knows only `model`'s price (or no price at all): what a
    /// remote worker gets from the server, whose table is the one that counts.
    pub fn only(model: &str, price: Option<ModelPrice>) -> Self {
        PriceTable {
            builtin: false,
            overrides: price
                .map(|price| BTreeMap::from([(model.to_string(), price)]))
                .unwrap_or_default(),
        }
    }

    /// This table with the user's prices, which win over built-in ones.
    pub fn with_overrides(
        mut self,
        overrides: &BTreeMap<String, ModelPrice>,
    ) -> Result<Self, InvalidPrice> {
        for (model, price) in overrides {
            if let Some(problem) = price.problem() {
                return Err(InvalidPrice {
                    model: model.clone(),
                    problem,
                });
            }
            self.overrides.insert(model.clone(), *price);
        }
        Ok(self)
    }

    /// The price of `model`, or `None` when neither the user nor kiln knows it.
    ///
    /// A name matches an entry when it is the entry's name, or the entry's
    /// name followed by a snapshot date (`gpt-4.1-2025-04-14` is `gpt-4.1`).
    /// Nothing else: `gpt-4.1-mini` is not `gpt-4.1`, and `my-gpt-4o` is
    /// nobody's. A user's entry wins over a built-in one, and an exact name
    /// over a snapshot's model.
    pub fn price(&self, model: &str) -> Option<ModelPrice> {
        let overrides = self
            .overrides
            .iter()
            .map(|(name, price)| (name.as_str(), *price));
        if let Some(price) = lookup(overrides, model) {
            return Some(price);
        }
        if self.builtin {
            return lookup(BUILTIN.iter().copied(), model);
        }
        None
    }
}

fn lookup<'a>(
    entries: impl Iterator<Item = (&'a str, ModelPrice)> + Clone,
    model: &str,
) -> Option<ModelPrice> {
    entries
        .clone()
        .find(|(name, _)| *name == model)
        .or_else(|| {
            entries
                .into_iter()
                .find(|(name, _)| is_snapshot_of(model, name))
        })
        .map(|(_, price)| price)
}

/// Whether `model` is `name-YYYY-MM-DD`.
fn is_snapshot_of(model: &str, name: &str) -> bool {
    let Some(date) = model
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    let bytes = date.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
}

#[cfg(test)]
#[path = "pricing_tests.rs"]
mod tests;
