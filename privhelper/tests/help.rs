//! `durhack-privhelper --help` (and `-h`) prints the usage, including what `--dev-insecure`
//! does, and exits 0: asking for help is not an error.

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_durhack-privhelper");

#[test]
fn help_exits_0_with_the_usage_and_says_what_dev_insecure_is() {
    for flag in ["--help", "-h"] {
        let out = Command::new(EXE).arg(flag).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{flag}: {text}");
        assert!(text.contains("usage: durhack-privhelper"), "{text}");
        assert!(
            text.contains("--dev-insecure skips") && text.contains("never in production"),
            "{text}"
        );
    }
}
