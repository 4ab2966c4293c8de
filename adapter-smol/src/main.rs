//! `switchboard`: the standalone server. `switchboard --dev` runs it with a generated signing
//! key and prints a token; `switchboard --help` lists the options.

fn main() -> std::process::ExitCode {
    switchboard_smol::cli::main()
}
