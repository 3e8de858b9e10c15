//! Forgejo's and Gitea's REST API (the `/api/v1` Swagger of either):
//! `POST /repos/{owner}/{repo}/pulls`, `PATCH /repos/{owner}/{repo}/pulls/{index}`
//! and `GET /repos/{owner}/{repo}/pulls?state=open` filtered by head branch
//! (the list's filters do not include the head). A draft ("work in
//! progress") is a title starting with `WIP: `, the first of the prefixes
//! both recognise by default (`WORK_IN_PROGRESS_PREFIXES`).

use reqwest::Method;
use serde_json::{json, Value};

use super::{answer_number, answer_url, Forge, ForgeError, ForgePull, Proposal};

const DRAFT_PREFIX: &str = "WIP: ";
/// Open pull requests looked through for one from kiln's branch.
const LIST_LIMIT: &str = "50";

fn pull_from(forge: &Forge, answer: &Value) -> Result<ForgePull, ForgeError> {
    Ok(ForgePull {
        number: answer_number(forge.kind(), answer, "number")?,
        url: answer_url(forge.kind(), answer, "html_url")?,
    })
}

fn title(proposal: &Proposal) -> String {
    if proposal.draft {
        format!("{DRAFT_PREFIX}{}", proposal.title)
    } else {
        proposal.title.clone()
    }
}

pub(super) async fn find_open(forge: &Forge, head: &str) -> Result<Option<ForgePull>, ForgeError> {
    let mut url = forge.repo_pulls_endpoint(None);
    url.query_pairs_mut()
        .append_pair("state", "open")
        .append_pair("limit", LIST_LIMIT);
    let answer = forge.exchange(Method::GET, url, None).await?;
    let from_head = answer.as_array().and_then(|pulls| {
        pulls
            .iter()
            .find(|pull| pull.pointer("/head/ref").and_then(Value::as_str) == Some(head))
    });
    match from_head {
        Some(pull) => pull_from(forge, pull).map(Some),
        None => Ok(None),
    }
}

pub(super) async fn create(forge: &Forge, proposal: &Proposal) -> Result<ForgePull, ForgeError> {
    let url = forge.repo_pulls_endpoint(None);
    let body = json!({
        "head": proposal.head,
        "base": proposal.base,
        "title": title(proposal),
        "body": proposal.body,
    });
    let answer = forge.exchange(Method::POST, url, Some(&body)).await?;
    pull_from(forge, &answer)
}

pub(super) async fn update(
    forge: &Forge,
    index: u64,
    proposal: &Proposal,
) -> Result<ForgePull, ForgeError> {
    let index = index.to_string();
    let url = forge.repo_pulls_endpoint(Some(index.as_str()));
    let body = json!({ "title": title(proposal), "body": proposal.body });
    let answer = forge.exchange(Method::PATCH, url, Some(&body)).await?;
    pull_from(forge, &answer)
}
