//! The `switchboard` command, built inside the tests crate so that its tests can start it as a
//! process (cargo only tells a package's own tests where its binaries are).

fn main() -> std::process::ExitCode {
    switchboard_smol::cli::main()
}
