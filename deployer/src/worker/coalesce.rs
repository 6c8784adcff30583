//! Coalescing: the pushes waiting for a deployment are triggers; what gets deployed is the
//! branch's current head.
//!
//! After the fetch, each waiting push is judged against the head `H` alone:
//! - a push whose commit is not `H` and not an ancestor of `H` is no longer on the branch (it was
//!   force-pushed away, or is a late delivery from before a force push): `stale`, never checked
//!   out or built;
//! - of the pushes on the branch, the last to arrive carries the run, which deploys `H`; the
//!   others are `superseded` by `H`;
//! - if `H` is the deployed commit already, every push on the branch is `stale`, unless an
//!   operator asked for a deploy (`deploy NAME` without `--sha`), which redeploys it. The caller
//!   passes a deployed commit only when the working tree is checked out at it (a failed run
//!   leaves the tree at the commit it tried), so a tree elsewhere gets the head again.
//!
//! An operator's `deploy NAME --sha X` (pinned) deploys exactly `X` when it is the last to
//! arrive; the next push moves forward to the head again. Nothing here needs the deployed
//! commit's history, so a deployed commit missing from the checkout (a re-clone after a force
//! push) changes nothing, and diverged histories need no tie-break.

use super::git::{GitError, Repo};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub sha: String,
    /// `deploy NAME --sha X`: deploy exactly this commit.
    pub pinned: bool,
    /// An operator's `deploy NAME`: deploy the head even if it is deployed already.
    pub forced: bool,
}

/// What becomes of one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Carries the run, which deploys [`Plan::target`].
    Deploy,
    /// On the branch, but another push carries the run of [`Plan::target`].
    Superseded,
    /// Not deployed, with the reason.
    Stale(String),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The commit to deploy: the head, or a pinned commit.
    pub target: Option<String>,
    /// One decision per candidate, in the candidates' order.
    pub decisions: Vec<Decision>,
}

/// `candidates` are in arrival order; pinned ones are present in `repo` (fetched by id before).
pub async fn plan(
    repo: &Repo,
    candidates: &[Candidate],
    head: &str,
    deployed: Option<&str>,
) -> Result<Plan, GitError> {
    let mut on_branch = Vec::with_capacity(candidates.len());
    for c in candidates {
        let live = c.pinned
            || c.sha == head
            || (repo.has_commit(&c.sha).await? && repo.is_ancestor(&c.sha, head).await?);
        on_branch.push(live);
    }
    let mut plan = Plan::default();
    let carrier = on_branch.iter().rposition(|&l| l);
    let target = carrier.map(|i| {
        if candidates[i].pinned {
            candidates[i].sha.clone()
        } else {
            head.to_owned()
        }
    });
    let already = match (&target, carrier) {
        (Some(t), Some(i)) => {
            !candidates[i].pinned
                && deployed == Some(t.as_str())
                && !candidates
                    .iter()
                    .zip(&on_branch)
                    .any(|(c, &l)| l && c.forced)
        }
        _ => false,
    };
    for (i, (c, &live)) in candidates.iter().zip(&on_branch).enumerate() {
        let decision = if !live {
            Decision::Stale(format!(
                "no longer on the branch: {} is not in the history of the head {head}",
                c.sha
            ))
        } else if already {
            Decision::Stale(format!(
                "already deployed: {head} is deployed and contains it"
            ))
        } else if Some(i) == carrier {
            Decision::Deploy
        } else {
            Decision::Superseded
        };
        plan.decisions.push(decision);
    }
    if !already {
        plan.target = target;
    }
    Ok(plan)
}
