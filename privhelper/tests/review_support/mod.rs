//! What the review regression tests share: a real nginx, the real helper as root with a policy
//! for one site `demo` (`demo.test`), and the requests they send it.
#![allow(dead_code)]

use std::time::Duration;

use protocol::client::Client;
use protocol::{ErrorCode, Outcome, Request, Response, SiteConfig, SiteName};
use testkit::nginx::Nginx;
use testkit::privhelper::{PolicySpec, PrivHelper};

/// nginx, the helper (its policy shaped by `spec`) and a client; `None` after a loud skip.
pub fn start(spec: impl FnOnce(PolicySpec) -> PolicySpec) -> Option<(Nginx, PrivHelper, Client)> {
    let nginx = Nginx::start()?;
    let spec = spec(PolicySpec::new(&nginx).site("demo", &["demo.test"]));
    let helper = PrivHelper::start(&nginx, &spec)?;
    let client = Client::new(helper.socket(), Duration::from_secs(120));
    Some((nginx, helper, client))
}

/// WriteSite for `demo`.
pub fn write(client: &Client, conf: &str) -> Response {
    let request = Request::WriteSite {
        site: SiteName::try_from("demo").unwrap(),
        config: SiteConfig::try_from(conf).unwrap(),
    };
    client.call(&request).unwrap()
}

/// True when the helper refused the conf; otherwise it must have been written.
pub fn refused(r: &Response) -> bool {
    match r {
        Response::Error { code: ErrorCode::ConfRefused, .. } => true,
        Response::Done { .. } => false,
        other => panic!("neither refused nor written: {other:?}"),
    }
}

/// ReloadNginx, then wait until nginx's workers are the new ones.
pub fn reload(nginx: &Nginx, client: &Client) {
    let old = nginx.worker_pids();
    let r = client.call(&Request::ReloadNginx).unwrap();
    assert!(matches!(r, Response::Done { outcome: Outcome::Reloaded, .. }), "{r:?}");
    nginx.wait_for_new_workers(&old);
}

/// WriteSite for `demo`, then ReloadNginx if the helper wrote it. False when it refused the
/// conf (the fixed behaviour: nothing to attack); true when the conf is live, and the test
/// must then show the attack does nothing.
pub fn publish(nginx: &Nginx, client: &Client, conf: &str) -> bool {
    let r = write(client, conf);
    eprintln!("WriteSite: {r:?}");
    if refused(&r) {
        return false;
    }
    reload(nginx, client);
    true
}

/// `<nginx www>/demo`, created: the site's root.
pub fn demo_root(nginx: &Nginx) -> std::path::PathBuf {
    let root = nginx.www_dir().join("demo");
    std::fs::create_dir_all(&root).unwrap();
    root
}
