//! Coalescing: of the pushes waiting for a deployment, deploy only the newest commit.
//!
//! "Newest" is by history, because GitHub does not promise delivery order: the commit that all
//! the others are ancestors of. Only when history has diverged (a force push) does arrival order
//! decide. A push whose commit is already contained in the deployed one is stale: a late or
//! redelivered push, never deployed, unless it is the branch head itself (a force push back to an
//! older commit, which must be honoured) or an explicit `deploy` from the command line.

use super::git::{GitError, Repo};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub sha: String,
    /// An operator's explicit request, which is never stale.
    pub explicit: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Index of the candidate to deploy.
    pub deploy: Option<usize>,
    pub superseded: Vec<usize>,
    pub stale: Vec<usize>,
}

/// `candidates` are in arrival order and all present in `repo`.
pub async fn plan(
    repo: &Repo,
    candidates: &[Candidate],
    deployed: Option<&str>,
    branch_head: Option<&str>,
) -> Result<Plan, GitError> {
    let mut plan = Plan::default();
    let mut live = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        let stale = match deployed {
            Some(d) if !c.explicit => {
                c.sha == d
                    || (branch_head != Some(c.sha.as_str()) && repo.is_ancestor(&c.sha, d).await?)
            }
            _ => false,
        };
        if stale {
            plan.stale.push(i);
        } else {
            live.push(i);
        }
    }
    let Some(&newest_arrival) = live.last() else {
        return Ok(plan);
    };
    let mut chosen = None;
    'candidates: for &i in live.iter().rev() {
        for &j in &live {
            if candidates[j].sha != candidates[i].sha
                && !repo
                    .is_ancestor(&candidates[j].sha, &candidates[i].sha)
                    .await?
            {
                continue 'candidates;
            }
        }
        chosen = Some(i);
        break;
    }
    let chosen = chosen.unwrap_or(newest_arrival);
    plan.deploy = Some(chosen);
    plan.superseded = live.into_iter().filter(|&i| i != chosen).collect();
    Ok(plan)
}
