//! People and teams (docs/roles.md): `GET /api/me`, users, teams and their
//! members (admins), and sharing a task with its team. The store decides
//! who may do what; a refusal is 403 with the role needed, or 404 for a
//! team or task outside the caller's teams.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use kiln_protocol::api::TaskDetail;
use kiln_protocol::teams::{
    NewTeam, NewUser, SetMember, Team, TeamList, User, UserList, UserPatch,
};

use super::ApiJson;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn me(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<User>, ApiError> {
    Ok(Json(state.store().me(&who).await?))
}

pub(super) async fn list_users(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<UserList>, ApiError> {
    let users = state.store().users(&who).await?;
    Ok(Json(UserList { users }))
}

pub(super) async fn create_user(
    State(state): State<AppState>,
    Caller(who): Caller,
    ApiJson(new): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let user = state.store().create_user(&who, &new).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

pub(super) async fn show_user(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(state.store().user(&who, &id).await?))
}

pub(super) async fn update_user(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<UserPatch>,
) -> Result<Json<User>, ApiError> {
    let user = state.store().update_user(&who, &id, &patch).await?;
    if user.disabled_at.is_some() {
        // Open event streams of the user's tokens end now rather than at
        // their next check.
        state
            .inner
            .revocations
            .send_modify(|n| *n = n.wrapping_add(1));
    }
    Ok(Json(user))
}

pub(super) async fn list_teams(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<TeamList>, ApiError> {
    let teams = state.store().teams(&who).await?;
    Ok(Json(TeamList { teams }))
}

pub(super) async fn create_team(
    State(state): State<AppState>,
    Caller(who): Caller,
    ApiJson(new): ApiJson<NewTeam>,
) -> Result<(StatusCode, Json<Team>), ApiError> {
    let team = state.store().create_team(&who, &new).await?;
    Ok((StatusCode::CREATED, Json(team)))
}

pub(super) async fn show_team(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<Team>, ApiError> {
    Ok(Json(state.store().team(&who, &id).await?))
}

pub(super) async fn set_member(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path((team, user)): Path<(String, String)>,
    ApiJson(body): ApiJson<SetMember>,
) -> Result<Json<Team>, ApiError> {
    let team = state
        .store()
        .set_member(&who, &team, &user, body.role)
        .await?;
    Ok(Json(team))
}

pub(super) async fn remove_member(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path((team, user)): Path<(String, String)>,
) -> Result<Json<Team>, ApiError> {
    Ok(Json(state.store().remove_member(&who, &team, &user).await?))
}

pub(super) async fn share(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<TaskDetail>, ApiError> {
    Ok(Json(state.store().share_task(&who, &id, true).await?))
}

pub(super) async fn unshare(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<TaskDetail>, ApiError> {
    Ok(Json(state.store().share_task(&who, &id, false).await?))
}
