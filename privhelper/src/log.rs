//! One line per event on stderr. Under systemd (`JOURNAL_STREAM` set) each line starts with the
//! syslog priority that journald reads (`<3>` error, `<4>` warning, `<6>` info), so the helper
//! needs no logging framework: fewer dependencies in the one root process.

use std::io::Write;

#[derive(Clone, Copy, Debug)]
pub enum Level {
    Error,
    Warn,
    Info,
}

pub fn write(level: Level, message: std::fmt::Arguments<'_>) {
    let (priority, word) = match level {
        Level::Error => ("<3>", "error"),
        Level::Warn => ("<4>", "warn"),
        Level::Info => ("<6>", "info"),
    };
    let priority = if std::env::var_os("JOURNAL_STREAM").is_some() {
        priority
    } else {
        ""
    };
    // A log line that cannot be written must not stop a request from being answered.
    let _ = writeln!(std::io::stderr().lock(), "{priority}{word}: {message}");
}

macro_rules! error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }
macro_rules! warning { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } }
macro_rules! info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
pub(crate) use {error, info, warning};
