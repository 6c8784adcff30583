//! durhack-privhelper: the root-owned helper that applies typed, policy-checked nginx and certbot
//! requests for durhack-deployer. Read SECURITY.md first.
//!
//! Usage:
//!   durhack-privhelper [--policy PATH] [--dev-insecure]         serve
//!   durhack-privhelper check [--policy PATH] [--dev-insecure]   validate and print the policy
//!   durhack-privhelper check-site [--policy PATH] SITE FILE     print the conf as it would be
//!                                                               written, or why it is refused
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::path::PathBuf;
use std::process::ExitCode;

use privhelper::policy::{DEFAULT_POLICY_PATH, Policy};
use privhelper::{checker, server};

const USAGE: &str = "usage: durhack-privhelper [check] [--policy PATH] [--dev-insecure]
       durhack-privhelper check-site [--policy PATH] SITE FILE
--dev-insecure skips the root and root-only-file checks: for tests, never in production";

struct Args {
    /// `[]`, `["check"]` or `["check-site", SITE, FILE]`.
    command: Vec<String>,
    policy: PathBuf,
    dev_insecure: bool,
}

fn parse_args() -> Result<Args, String> {
    let (mut command, mut policy, mut dev_insecure) =
        (Vec::new(), DEFAULT_POLICY_PATH.into(), false);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--policy" => policy = it.next().map(PathBuf::from).ok_or("--policy needs a path")?,
            "--dev-insecure" => dev_insecure = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ if arg.starts_with('-') => return Err(format!("unexpected option {arg:?}\n{USAGE}")),
            _ => command.push(arg),
        }
    }
    Ok(Args { command, policy, dev_insecure })
}

fn main() -> ExitCode {
    let Err(e) = run() else { return ExitCode::SUCCESS };
    privhelper::error!("{e}");
    ExitCode::FAILURE
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let check = match args.command.as_slice() {
        [] => false,
        [check] if check == "check" => true,
        [cmd, site, file] if cmd == "check-site" => {
            return check_site(&args.policy, site, file.as_ref());
        }
        other => return Err(format!("unexpected arguments {other:?}\n{USAGE}")),
    };
    let is_root = nix::unistd::Uid::effective().is_root();
    if args.dev_insecure {
        privhelper::warning!(
            "*** --dev-insecure: NOT checking that we are root or that the policy and conf dir are root-only. Never use this in production. ***"
        );
    } else if !is_root {
        return Err("must run as root (use --dev-insecure only for development)".into());
    }
    let policy = Policy::load(&args.policy)?;
    if !args.dev_insecure {
        policy.check_ownership(&args.policy).map_err(|e| format!("refusing to start: {e}"))?;
    }
    if check {
        // Every field, so nothing the policy allows can be left out of what an operator reads.
        println!("policy {} is valid; it allows:\n{policy:#?}", args.policy.display());
        println!("directives: {}", checker::allowed_directives().collect::<Vec<_>>().join(" "));
        return Ok(());
    }
    let listener = server::listen(&policy)?;
    if is_root {
        server::drop_privileges()?;
    } else {
        privhelper::warning!("*** not root (--dev-insecure): capabilities are not dropped ***");
    }
    privhelper::info!("serving on {} for uid {}", policy.socket.display(), policy.client_uid);
    server::serve(&policy, &listener)
}

/// Needs neither root nor nginx: reads the policy and the file, prints what would be written.
fn check_site(policy: &std::path::Path, site: &str, file: &std::path::Path) -> Result<(), String> {
    let policy = Policy::load(policy)?;
    let site = protocol::SiteName::try_from(site.to_string()).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let written = checker::check(&policy, &site, &text).map_err(|e| format!("refused: {e}"))?;
    print!("{written}");
    Ok(())
}
