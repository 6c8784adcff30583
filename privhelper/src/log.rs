//! One line per event on stderr. Under systemd (`JOURNAL_STREAM` set) each line starts with the
//! syslog priority that journald reads (`<3>` error, `<4>` warning, `<6>` info), so the helper
//! needs no logging framework: fewer dependencies in the one root process.

use std::io::Write;

/// `level` is a syslog priority (3 error, 4 warning, 6 info), `word` says it to a person.
pub fn write(level: u8, word: &str, message: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    // A log line that cannot be written must not stop a request from being answered.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        let _ = write!(err, "<{level}>");
    }
    let _ = writeln!(err, "{word}: {message}");
}

#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::write(3, "error", format_args!($($t)*)) } }
#[macro_export]
macro_rules! warning { ($($t:tt)*) => { $crate::log::write(4, "warn", format_args!($($t)*)) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::write(6, "info", format_args!($($t)*)) } }
