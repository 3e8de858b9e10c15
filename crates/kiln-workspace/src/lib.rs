//! git for kiln: per-attempt checkouts, diffs, commits and branches.
