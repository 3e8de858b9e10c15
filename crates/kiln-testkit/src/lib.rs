//! Test support: a scripted OpenAI-compatible model server (issue 2).
