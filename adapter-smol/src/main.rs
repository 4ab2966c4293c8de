//! `switchboard`: the standalone server. `switchboard --dev` runs it with a generated signing
//! key and prints a token; `switchboard --help` lists the options.

/// Fan-out allocates and frees one small frame per recipient, on one thread: mimalloc's
/// thread-local free lists cost a fraction of glibc's bins for that, and fragment less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchboard_smol::cli::main()
}
