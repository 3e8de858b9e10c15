//! Who may do what: the one place kiln decides access to environments and
//! tasks (docs/roles.md has the table). Every store operation that takes a
//! [`Principal`] goes through these checks; the SQL of list queries applies
//! the same rules (see [`visible_tasks_sql`]).
//!
//! A thing in a team the caller does not belong to is "not found" (its
//! existence is not revealed); a thing the caller can see, or whose team
//! they belong to, but may not act on is "forbidden", with the role needed.

use kiln_protocol::api::Task;
use kiln_protocol::teams::TeamRole;

use crate::error::StoreError;
use crate::tokens::Principal;

/// What a caller wants to do with an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvironmentAction {
    /// See it (never its secret values): any role in its team.
    Read,
    /// Run tasks on it: members and maintainers.
    Run,
    /// Change it, its secrets, webhook or forge, or delete it: maintainers.
    Manage,
}

/// What a caller wants to do with a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAction {
    /// See it, its events, diffs, messages.
    Read,
    /// Follow up, steer, cancel, prefer an attempt, open a pull request.
    Act,
    /// Share it with its team, or stop sharing it.
    Share,
}

impl Principal {
    /// The caller's role in `team_id`, if they belong to it.
    pub fn team_role(&self, team_id: &str) -> Option<TeamRole> {
        self.teams
            .iter()
            .find(|m| m.team_id == team_id)
            .map(|m| m.role)
    }

    /// The teams where the caller is a maintainer.
    pub fn maintained_teams(&self) -> impl Iterator<Item = &kiln_protocol::teams::Membership> {
        self.teams.iter().filter(|m| m.role == TeamRole::Maintainer)
    }
}

/// Whether `who` may do `action` on the environment `name` of `team_id`.
pub fn check_environment(
    who: &Principal,
    team_id: Option<&str>,
    name: &str,
    action: EnvironmentAction,
) -> Result<(), StoreError> {
    if who.admin {
        return Ok(());
    }
    let Some(role) = team_id.and_then(|team| who.team_role(team)) else {
        return Err(StoreError::not_found(format!("environment {name}")));
    };
    let team = team_name(who, team_id);
    match action {
        EnvironmentAction::Read => Ok(()),
        EnvironmentAction::Run if role.may_run() => Ok(()),
        EnvironmentAction::Run => Err(StoreError::forbidden(format!(
            "you are a viewer in team {team}: only its members and maintainers run tasks on \
             environment {name}; ask an admin to make you a member"
        ))),
        EnvironmentAction::Manage if role == TeamRole::Maintainer => Ok(()),
        EnvironmentAction::Manage => Err(StoreError::forbidden(format!(
            "only maintainers of team {team} may change environment {name} or its secrets \
             (you are a {role}); ask an admin to make you a maintainer"
        ))),
    }
}

/// Whether `who` may do `action` on `task`.
pub fn check_task(who: &Principal, task: &Task, action: TaskAction) -> Result<(), StoreError> {
    if who.admin {
        return Ok(());
    }
    let author = task.user_id.is_some() && task.user_id == who.user_id
        // A task no user was migrated to is its token's.
        || (task.user_id.is_none() && task.owner_token_id == who.token_id);
    if author {
        return Ok(());
    }
    let Some(role) = task.team_id.as_deref().and_then(|team| who.team_role(team)) else {
        return Err(StoreError::not_found(format!("task {}", task.id)));
    };
    let team = team_name(who, task.team_id.as_deref());
    let id = &task.id;
    match (action, role) {
        (_, TeamRole::Maintainer) => Ok(()),
        (TaskAction::Read, _) if task.shared => Ok(()),
        (TaskAction::Act, TeamRole::Member) if task.shared => Ok(()),
        (TaskAction::Act, TeamRole::Viewer) if task.shared => Err(StoreError::forbidden(format!(
            "you are a viewer in team {team}: you may read task {id} but not follow it up, \
             cancel it or open its pull request; ask an admin to make you a member"
        ))),
        (TaskAction::Share, _) => Err(StoreError::forbidden(format!(
            "only the author of task {id} or a maintainer of team {team} may share it"
        ))),
        _ => Err(StoreError::forbidden(format!(
            "task {id} is private to its author: ask them to share it with team {team} \
             (`kiln task share {id}`)"
        ))),
    }
}

fn team_name<'a>(who: &'a Principal, team_id: Option<&'a str>) -> &'a str {
    team_id
        .and_then(|team| who.teams.iter().find(|m| m.team_id == team))
        .map(|m| m.team_name.as_str())
        .or(team_id)
        .unwrap_or("(none)")
}

/// The condition that a task row aliased `t` is visible to the caller, for
/// list queries: `$A` binds `who.admin`, `$U` `who.user_id`, `$K`
/// `who.token_id`. The same rule as [`check_task`] with [`TaskAction::Read`].
macro_rules! visible_tasks_sql {
    ($a:literal, $u:literal, $k:literal) => {
        concat!(
            "(",
            $a,
            " OR t.user_id = ",
            $u,
            " OR (t.user_id IS NULL AND t.owner_token_id = ",
            $k,
            ")",
            " OR EXISTS (SELECT 1 FROM team_members m WHERE m.team_id = t.team_id",
            " AND m.user_id = ",
            $u,
            " AND (m.role = 'maintainer' OR t.shared)))"
        )
    };
}
pub(crate) use visible_tasks_sql;
