//! GitHub's REST API (docs.github.com/rest/pulls/pulls): `POST
//! /repos/{owner}/{repo}/pulls`, `PATCH /repos/{owner}/{repo}/pulls/{number}`,
//! and `GET /repos/{owner}/{repo}/pulls?head=owner:branch&state=open`.
//! A draft is the `draft` field; it can only be set at creation.

use reqwest::Method;
use serde_json::{json, Value};

use super::{answer_number, answer_url, Forge, ForgeError, ForgePull, Proposal};

fn pull_from(forge: &Forge, answer: &Value) -> Result<ForgePull, ForgeError> {
    Ok(ForgePull {
        number: answer_number(forge.kind(), answer, "number")?,
        url: answer_url(forge.kind(), answer, "html_url")?,
    })
}

pub(super) async fn find_open(forge: &Forge, head: &str) -> Result<Option<ForgePull>, ForgeError> {
    let mut url = forge.repo_pulls_endpoint(None);
    let owner = forge.repo_parts().next().unwrap_or_default();
    url.query_pairs_mut()
        .append_pair("head", &format!("{owner}:{head}"))
        .append_pair("state", "open");
    let answer = forge.exchange(Method::GET, url, None).await?;
    match answer.as_array().and_then(|pulls| pulls.first()) {
        Some(first) => pull_from(forge, first).map(Some),
        None => Ok(None),
    }
}

pub(super) async fn create(forge: &Forge, proposal: &Proposal) -> Result<ForgePull, ForgeError> {
    let url = forge.repo_pulls_endpoint(None);
    let body = json!({
        "title": proposal.title,
        "head": proposal.head,
        "base": proposal.base,
        "body": proposal.body,
        "draft": proposal.draft,
    });
    let answer = forge.exchange(Method::POST, url, Some(&body)).await?;
    pull_from(forge, &answer)
}

pub(super) async fn update(
    forge: &Forge,
    number: u64,
    proposal: &Proposal,
) -> Result<ForgePull, ForgeError> {
    let number = number.to_string();
    let url = forge.repo_pulls_endpoint(Some(number.as_str()));
    let body = json!({ "title": proposal.title, "body": proposal.body });
    let answer = forge.exchange(Method::PATCH, url, Some(&body)).await?;
    pull_from(forge, &answer)
}
