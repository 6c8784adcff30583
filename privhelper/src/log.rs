//! One line per event on stderr. Under systemd (`JOURNAL_STREAM` set) each line starts with the
//! syslog priority that journald reads (`<3>` error, `<4>` warning, `<6>` info), so the helper
//! needs no logging framework: fewer dependencies in the one root process.

use std::io::Write;

/// `level` is a syslog priority: 3 error, 4 warning, 6 info.
pub fn write(level: u8, message: std::fmt::Arguments<'_>) {
    let word = match level {
        0..=3 => "error",
        4 => "warn",
        _ => "info",
    };
    let mut err = std::io::stderr().lock();
    // A log line that cannot be written must not stop a request from being answered.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        let _ = write!(err, "<{level}>");
    }
    let _ = writeln!(err, "{word}: {message}");
}

#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::write(3, format_args!($($t)*)) } }
#[macro_export]
macro_rules! warning { ($($t:tt)*) => { $crate::log::write(4, format_args!($($t)*)) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::write(6, format_args!($($t)*)) } }
