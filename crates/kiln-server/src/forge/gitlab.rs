//! GitLab's REST API (docs.gitlab.com/api/merge_requests): `POST
//! /projects/{id}/merge_requests`, `PUT /projects/{id}/merge_requests/{iid}`
//! and `GET /projects/{id}/merge_requests?source_branch=…&state=opened`,
//! where `{id}` is the URL-encoded project path (`group%2Fname`). A draft
//! is a title starting with `Draft: `.

use reqwest::Method;
use serde_json::{json, Value};

use super::{answer_number, answer_url, Forge, ForgeError, ForgePull, Proposal};

const DRAFT_PREFIX: &str = "Draft: ";

fn pull_from(forge: &Forge, answer: &Value) -> Result<ForgePull, ForgeError> {
    Ok(ForgePull {
        number: answer_number(forge.kind(), answer, "iid")?,
        url: answer_url(forge.kind(), answer, "web_url")?,
    })
}

fn title(proposal: &Proposal) -> String {
    if proposal.draft {
        format!("{DRAFT_PREFIX}{}", proposal.title)
    } else {
        proposal.title.clone()
    }
}

fn merge_requests(forge: &Forge) -> reqwest::Url {
    forge.endpoint(["projects", forge.repo.as_str(), "merge_requests"])
}

pub(super) async fn find_open(forge: &Forge, head: &str) -> Result<Option<ForgePull>, ForgeError> {
    let mut url = merge_requests(forge);
    url.query_pairs_mut()
        .append_pair("source_branch", head)
        .append_pair("state", "opened");
    let answer = forge.exchange(Method::GET, url, None).await?;
    match answer.as_array().and_then(|requests| requests.first()) {
        Some(first) => pull_from(forge, first).map(Some),
        None => Ok(None),
    }
}

pub(super) async fn create(forge: &Forge, proposal: &Proposal) -> Result<ForgePull, ForgeError> {
    let body = json!({
        "source_branch": proposal.head,
        "target_branch": proposal.base,
        "title": title(proposal),
        "description": proposal.body,
    });
    let answer = forge
        .exchange(Method::POST, merge_requests(forge), Some(&body))
        .await?;
    pull_from(forge, &answer)
}

pub(super) async fn update(
    forge: &Forge,
    iid: u64,
    proposal: &Proposal,
) -> Result<ForgePull, ForgeError> {
    let iid = iid.to_string();
    let url = forge.endpoint([
        "projects",
        forge.repo.as_str(),
        "merge_requests",
        iid.as_str(),
    ]);
    let body = json!({ "title": title(proposal), "description": proposal.body });
    let answer = forge.exchange(Method::PUT, url, Some(&body)).await?;
    pull_from(forge, &answer)
}
