//! `check`'s warnings about what a build could still reach: the sandbox's state per deployment,
//! and local servers that would let any process of the deployer's user in. Builds share the
//! network (they fetch packages), so PostgreSQL and Redis must ask for a password the builds
//! cannot read; peer or trust authentication over the Unix socket lets every process of the
//! same user in, sandboxed builds included.

use crate::config::Config;
use crate::worker::sandbox;

/// One line per problem, each saying what to change.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for d in config.enabled_deployments() {
        if let (true, message) = sandbox::describe(d) {
            out.push(message);
        }
    }
    if let Some(url) = &config.database_url {
        out.extend(database_warning(url));
    }
    if let Some(url) = &config.redis_url {
        out.extend(redis_warning(url));
    }
    out
}

fn database_warning(url: &str) -> Option<String> {
    if url.starts_with("sqlite:") {
        return None;
    }
    let Ok(parsed) = url::Url::parse(url) else {
        return Some("database_url: cannot be parsed to check its authentication".to_owned());
    };
    let query_host = parsed
        .query_pairs()
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.into_owned());
    let unix_socket = parsed.host_str().is_none_or(str::is_empty)
        || query_host.as_deref().is_some_and(|h| h.starts_with('/'));
    let has_password = parsed.password().is_some_and(|p| !p.is_empty())
        || parsed
            .query_pairs()
            .any(|(k, _)| k == "password" || k == "passfile" || k == "sslcert");
    if unix_socket {
        Some(
            "database_url: PostgreSQL over its Unix socket, where peer or trust authentication lets every process of this user in, builds included: connect over TCP (127.0.0.1) with a password, or make pg_hba.conf ask for scram-sha-256 on the socket".to_owned(),
        )
    } else if !has_password {
        Some(
            "database_url: no password: if PostgreSQL trusts local connections, any local process (a build shares the network) can rewrite the ledger; use scram-sha-256 with a password".to_owned(),
        )
    } else {
        None
    }
}

fn redis_warning(url: &str) -> Option<String> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Some("redis_url: cannot be parsed to check its authentication".to_owned());
    };
    let has_password = parsed.password().is_some_and(|p| !p.is_empty())
        || parsed
            .query_pairs()
            .any(|(k, _)| k == "pass" || k == "password");
    (!has_password).then(|| {
        "redis_url: no password: any local process (a build shares the network) can take or break the deploy locks; set `requirepass` (or an ACL user) and put the password in the URL".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwordless_and_socket_urls_are_flagged() {
        for bad in [
            "postgres://deployer@127.0.0.1/deployer",
            "postgres:///deployer",
            "postgresql://deployer:pw@localhost/deployer?host=/run/postgresql",
        ] {
            assert!(database_warning(bad).is_some(), "{bad}");
        }
        for good in [
            "postgres://deployer:pw@127.0.0.1:5432/deployer",
            "sqlite:///var/lib/x.sqlite3",
        ] {
            assert!(database_warning(good).is_none(), "{good}");
        }
        for bad in ["redis://127.0.0.1:6379", "redis+unix:///run/redis.sock"] {
            assert!(redis_warning(bad).is_some(), "{bad}");
        }
        for good in [
            "redis://:pw@127.0.0.1:6379",
            "redis://deployer:pw@127.0.0.1/0",
            "redis+unix:///run/redis.sock?pass=pw",
        ] {
            assert!(redis_warning(good).is_none(), "{good}");
        }
    }
}
