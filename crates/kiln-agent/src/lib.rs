//! The agent loop (issue 2).
