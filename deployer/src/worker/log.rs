//! A run's log: `state_dir/logs/<deployment>/<run-id>.log`, one timestamped line per line of
//! output, written the moment it is read so `logs --follow` shows a build as it happens; control
//! characters (but tabs) are written escaped (`\u{1b}`), never raw.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

const STAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

#[derive(Debug)]
pub struct RunLog {
    path: PathBuf,
    file: Mutex<File>,
    /// Values masked wherever a line holds them (see [`RunLog::redacting`]).
    redact: Vec<crate::config::Secret>,
}

impl RunLog {
    pub fn create(path: PathBuf) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            path,
            file: Mutex::new(file),
            redact: Vec::new(),
        })
    }

    /// Masks `secrets` (the webhook secret, the GitHub token) as `***` wherever a line holds
    /// them: a build may print them (one with `sandbox = false` can read them), and run logs
    /// outlive the run.
    pub fn redacting(mut self, secrets: impl IntoIterator<Item = crate::config::Secret>) -> Self {
        self.redact = secrets
            .into_iter()
            .filter(|s| !s.expose().is_empty())
            .collect();
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line (or several, if `text` has newlines), each with the current time.
    /// A failing log write must not fail the deploy, so it is only reported.
    pub fn line(&self, text: &str) {
        let text = self
            .redact
            .iter()
            .fold(std::borrow::Cow::Borrowed(text), |t, secret| {
                if t.contains(secret.expose()) {
                    std::borrow::Cow::Owned(t.replace(secret.expose(), "***"))
                } else {
                    t
                }
            });
        let stamp = OffsetDateTime::now_utc()
            .format(STAMP)
            .unwrap_or_else(|_| "?".into());
        let mut out = String::with_capacity(text.len() + 32);
        for l in text.split('\n') {
            out.push_str(&stamp);
            out.push(' ');
            // Control characters shown, not sent: `logs` prints these lines to the operator's
            // terminal, where a build's escape sequences (or a carriage return over a fake line)
            // would act.
            for c in l.strip_suffix('\r').unwrap_or(l).chars() {
                if c.is_control() && c != '\t' {
                    out.extend(c.escape_default());
                } else {
                    out.push(c);
                }
            }
            out.push('\n');
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(out.as_bytes()) {
            tracing::warn!(log = %self.path.display(), error = %e, "cannot write to a run log");
        }
    }
}
