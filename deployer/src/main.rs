//! `durhack-deployer`: see `deployer::cli` for the commands.

fn main() -> std::process::ExitCode {
    deployer::cli::main()
}
