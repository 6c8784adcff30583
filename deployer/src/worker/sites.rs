//! The sites step: publish a deployment's nginx confs through the root helper.
//!
//! Sites whose conf changed since the last successful deploy (all of them on the first) are
//! written, sites dropped from the repository or the config are removed, nginx is reloaded once,
//! and a certificate is requested for every site (the helper skips valid ones); nginx is reloaded
//! again if one was issued. A conf naming a certificate that does not exist yet is published in
//! two steps around its issue (see [`first_certificate`]). Diffs are taken
//! from the last *successful* deploy, so whatever a failed run left half-done is redone next time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocol::client::{Client, ClientError};
use protocol::nginx_syntax;
use protocol::{Domain, Domains, ErrorCode, Outcome, Request, Response, SiteConfig, SiteName};

use super::log::RunLog;
use super::retry::Backoff;
use crate::config::Deployment;

/// certbot may take minutes; anything else answers in seconds.
const HELPER_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("site {site}: cannot read {path}: {source}")]
    Read {
        site: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("site {site}: {reason}")]
    Invalid { site: String, reason: String },
    #[error(
        "site {site}: {path} leads out of the working tree (a symlink the build left?); refused"
    )]
    OutsideTree { site: String, path: PathBuf },
    #[error("privileged helper refused {verb}{site}: {code}: {detail}")]
    Refused {
        verb: &'static str,
        site: String,
        code: protocol::ErrorCode,
        detail: String,
    },
    #[error("privileged helper: {0}")]
    Client(#[from] ClientError),
    #[error("privileged helper answered {0} with something unexpected")]
    Unexpected(&'static str),
    #[error("fenced out: another holder took the deployment's lock")]
    Fenced,
    #[error("cannot record the published sites in {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The helper, called from async code.
#[derive(Debug, Clone)]
pub struct Helper {
    client: Client,
}

impl Helper {
    pub fn new(socket: &Path) -> Self {
        Self {
            client: Client::new(socket, HELPER_TIMEOUT),
        }
    }

    /// One request, retried while the helper is unreachable.
    async fn call(&self, request: Request, log: &RunLog) -> Result<Outcome, SiteError> {
        let verb = request.verb();
        let site = request
            .site()
            .map(|s| format!(" for {s}"))
            .unwrap_or_default();
        let mut backoff = Backoff::transient();
        let response = loop {
            let client = self.client.clone();
            let req = request.clone();
            let answer = tokio::task::spawn_blocking(move || client.call(&req))
                .await
                .map_err(|_| SiteError::Unexpected(verb))?;
            match answer {
                Ok(response) => break response,
                Err(e) if e.is_transient() => match backoff.next() {
                    Some(wait) => {
                        log.line(&format!("helper {verb}{site}: {e}; retrying in {wait:?}"));
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(e.into()),
                },
                Err(e) => return Err(e.into()),
            }
        };
        match response {
            Response::Done { outcome, detail } => {
                let detail = detail.as_str().trim();
                if detail.is_empty() {
                    log.line(&format!("helper {verb}{site}: {outcome}"));
                } else {
                    log.line(&format!("helper {verb}{site}: {outcome}: {detail}"));
                }
                Ok(outcome)
            }
            Response::Error { code, detail } => {
                log.line(&format!(
                    "helper refused {verb}{site}: {code}: {}",
                    detail.as_str().trim()
                ));
                Err(SiteError::Refused {
                    verb,
                    site,
                    code,
                    detail: detail.as_str().trim().to_owned(),
                })
            }
            Response::Hello { .. } => Err(SiteError::Unexpected(verb)),
        }
    }
}

/// Where the names of the sites a deployment has published are kept, so that a site dropped
/// from the config can still be removed.
pub fn published_list(state_dir: &Path, deployment: &str) -> PathBuf {
    state_dir.join("sites").join(format!("{deployment}.list"))
}

fn read_published(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .map(|s| {
            s.lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn write_published(path: &Path, sites: &BTreeSet<String>) -> Result<(), SiteError> {
    let io = |source| SiteError::State {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("list.tmp");
    let text: String = sites.iter().map(|s| format!("{s}\n")).collect();
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn site_name(site: &str) -> Result<SiteName, SiteError> {
    SiteName::try_from(site).map_err(|e| SiteError::Invalid {
        site: site.to_owned(),
        reason: e.to_string(),
    })
}

/// The certificate domains of a conf: its `server_name`s that are plain host names (not `_`,
/// wildcards or regexes), without duplicates.
pub fn domains_of(conf: &str) -> Result<Option<Domains>, String> {
    let directives = nginx_syntax::parse(conf).map_err(|e| e.to_string())?;
    let mut seen = BTreeSet::new();
    let domains: Vec<Domain> = nginx_syntax::server_names(&directives)
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .filter_map(|n| Domain::try_from(n.as_str()).ok())
        .collect();
    if domains.is_empty() {
        return Ok(None);
    }
    Domains::try_from(domains)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The servers of `conf` that need no certificate: `listen … ssl` and `ssl_*` directives dropped,
/// and servers left without a `listen` with them. `None` if no server is left, that is, if
/// nothing of the site could answer an ACME challenge before its certificate exists.
pub fn http_only(conf: &str) -> Result<Option<String>, String> {
    let mut directives = nginx_syntax::parse(conf).map_err(|e| e.to_string())?;
    let is_ssl = |d: &nginx_syntax::Directive| {
        (d.name == "listen" && d.args.iter().any(|a| a == "ssl")) || d.name.starts_with("ssl_")
    };
    for server in directives.iter_mut().filter(|d| d.name == "server") {
        if let Some(block) = &mut server.block {
            block.retain(|d| !is_ssl(d));
        }
    }
    directives.retain(|d| {
        d.name != "server"
            || d.block
                .as_ref()
                .is_some_and(|b| b.iter().any(|l| l.name == "listen"))
    });
    Ok(directives
        .iter()
        .any(|d| d.name == "server")
        .then(|| nginx_syntax::render(&directives)))
}

/// Whether `nginx -t` failed because a certificate or key a conf names does not exist (yet).
fn missing_certificate(error: &SiteError) -> bool {
    matches!(error, SiteError::Refused { code: ErrorCode::NginxTestFailed, detail, .. }
        if detail.contains("cannot load certificate"))
}

/// A new TLS site's first certificate: its conf cannot pass `nginx -t` before the certificate
/// exists, and certbot cannot get one before nginx answers the challenge. So: publish the
/// servers without `ssl`, reload, issue, then publish the whole conf.
async fn first_certificate(
    helper: &Helper,
    site: &SiteName,
    config: &SiteConfig,
    log: &RunLog,
    holder: &impl Holder,
) -> Result<(), SiteError> {
    let invalid = |reason: String| SiteError::Invalid {
        site: site.to_string(),
        reason,
    };
    let no_http = || {
        invalid(
            "its certificate does not exist yet, and no server without `ssl` is left to answer the ACME challenge: add a port-80 server that includes the ACME challenge snippet".into(),
        )
    };
    let http = http_only(config.as_str())
        .map_err(invalid)?
        .ok_or_else(no_http)?;
    let domains = domains_of(config.as_str())
        .map_err(invalid)?
        .ok_or_else(no_http)?;
    let http = SiteConfig::try_from(http).map_err(|e| invalid(e.to_string()))?;
    log.line(&format!(
        "site {site}: its certificate does not exist yet: publishing its servers without ssl, issuing it, then the whole conf"
    ));
    for request in [
        Request::WriteSite {
            site: site.clone(),
            config: http,
        },
        Request::ReloadNginx,
        Request::IssueCertificate {
            site: site.clone(),
            domains,
        },
        Request::WriteSite {
            site: site.clone(),
            config: config.clone(),
        },
    ] {
        if !holder.still_ours().await {
            return Err(SiteError::Fenced);
        }
        helper.call(request, log).await?;
    }
    Ok(())
}

/// Who publishes: asked right before each helper request whether the deployment is still ours.
pub trait Holder: Sync {
    fn still_ours(&self) -> impl std::future::Future<Output = bool> + Send;
}

/// Runs the sites step; the caller holds the nginx lock. `changed` is `None` on a first deploy
/// (or when the previous commit is unknown), when every site is written. `holder` is asked
/// right before each helper request: once it says no (the deployment's lock or fencing token
/// is another holder's), nothing more is sent.
pub async fn publish(
    helper: &Helper,
    deployment: &Deployment,
    state_dir: &Path,
    changed: Option<&[PathBuf]>,
    log: &Arc<RunLog>,
    holder: &impl Holder,
) -> Result<(), SiteError> {
    let list = published_list(state_dir, &deployment.name);
    let previous = read_published(&list);
    let mut current = BTreeSet::new();
    let mut certificates = Vec::new();
    let mut requests = Vec::new();
    for (site, rel) in &deployment.sites {
        let name = site_name(site)?;
        let path = deployment.path.join(rel);
        // The daemon reads what the sandbox hides: a build could leave the conf (or a directory
        // above it) as a symlink to the secret, whose text would come back in an error. Nothing
        // of the build runs any more, so what is checked here is what is read.
        if let (Ok(real), Ok(tree)) = (
            std::fs::canonicalize(&path),
            std::fs::canonicalize(&deployment.path),
        ) && !real.starts_with(&tree)
        {
            return Err(SiteError::OutsideTree {
                site: site.clone(),
                path: rel.clone(),
            });
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if previous.contains(site) || changed.is_none() {
                    log.line(&format!("site {site}: {} is gone; removing", rel.display()));
                    requests.push(Request::RemoveSite { site: name });
                }
                continue;
            }
            Err(source) => {
                return Err(SiteError::Read {
                    site: site.clone(),
                    path,
                    source,
                });
            }
        };
        current.insert(site.clone());
        let is_new = !previous.contains(site);
        let is_changed = changed.is_none_or(|c| c.iter().any(|p| p == rel));
        if is_new || is_changed {
            let config = SiteConfig::try_from(text.as_str()).map_err(|e| SiteError::Invalid {
                site: site.clone(),
                reason: e.to_string(),
            })?;
            requests.push(Request::WriteSite {
                site: name.clone(),
                config,
            });
        }
        match domains_of(&text) {
            Ok(Some(domains)) => certificates.push(Request::IssueCertificate {
                site: name,
                domains,
            }),
            Ok(None) => log.line(&format!("site {site}: no server_name to certify")),
            Err(e) => {
                return Err(SiteError::Invalid {
                    site: site.clone(),
                    reason: e,
                });
            }
        }
    }
    for site in previous.difference(&deployment.sites.keys().cloned().collect()) {
        log.line(&format!("site {site}: no longer configured; removing"));
        requests.push(Request::RemoveSite {
            site: site_name(site)?,
        });
    }
    requests.push(Request::ReloadNginx);
    for request in requests {
        if !holder.still_ours().await {
            return Err(SiteError::Fenced);
        }
        match helper.call(request.clone(), log).await {
            Err(e) if missing_certificate(&e) => match &request {
                Request::WriteSite { site, config } => {
                    first_certificate(helper, site, config, log, holder).await?
                }
                _ => return Err(e),
            },
            other => {
                other?;
            }
        }
    }
    // Recorded before certificates: the confs are live now, whatever certbot says.
    write_published(&list, &current)?;
    let mut issued = false;
    for request in certificates {
        if !holder.still_ours().await {
            return Err(SiteError::Fenced);
        }
        issued |= helper.call(request, log).await? == Outcome::CertificateIssued;
    }
    // nginx reads certificates only when it loads its configuration: a new or renewed one is
    // served from the next reload.
    if issued {
        if !holder.still_ours().await {
            return Err(SiteError::Fenced);
        }
        helper.call(Request::ReloadNginx, log).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::http_only;

    #[test]
    fn http_only_keeps_what_needs_no_certificate() {
        let conf = "server { listen 80; server_name a.test; include /s/acme.conf; }
            server { listen 443 ssl; server_name a.test; ssl_certificate /l/a/f.pem; }
            server { listen 80; listen [::]:443 ssl; server_name b.test; ssl_certificate_key /l/k.pem; root /w; }";
        let http = http_only(conf).unwrap().unwrap();
        assert!(!http.contains("ssl"), "{http}");
        assert_eq!(http.matches("server {").count(), 2, "{http}");
        assert!(
            http.contains("\"/s/acme.conf\"") && http.contains("\"/w\""),
            "{http}"
        );
        let tls_only = "server { listen 443 ssl; server_name a.test; ssl_certificate /l/a/f.pem; }";
        assert_eq!(http_only(tls_only).unwrap(), None);
        assert!(http_only("server {").is_err());
    }
}
