//! The browser client in a real headless Chromium, as part of `cargo test --workspace`:
//!
//! 1. the wasm boundary, with wasm-bindgen-test (`adapter-wasm/tests/web.rs`);
//! 2. the TypeScript package: `npm ci` (when `node_modules` is missing), `npm run build` (the
//!    wasm included), the strict type-check, the size budgets, and the Playwright suite
//!    (`adapter-wasm/test/`) against this crate's real `switchboard` process.
//!
//! Needs Chromium, chromedriver, Node.js with npm, binaryen's `wasm-opt`, the
//! `wasm32-unknown-unknown` target and `wasm-bindgen-cli` at the version in `Cargo.lock`: `.ci/run`
//! installs them all, and a missing one fails here with the command that installs it.
//! One test runs the steps in order, so that two builds never compete for the machine.

use std::path::{Path, PathBuf};
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_switchboard-under-test");
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// Fails with how to install `program` when it is not there.
fn require(program: &str, install: &str) {
    let found = Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "`{program}` is needed by the browser tests; install it with: {install}");
}

/// Runs `program args` in `dir`, streaming its output, and fails the test if it fails. The
/// coverage tool's instrumentation is not passed on: the wasm build cannot take it.
fn run(dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) {
    eprintln!("\n$ (cd {}; {program} {})", dir.display(), args.join(" "));
    let mut command = Command::new(program);
    command.args(args).current_dir(dir);
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "RUSTC_WRAPPER", "LLVM_PROFILE_FILE"] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let status = command.status().unwrap_or_else(|e| panic!("{program} did not start: {e}"));
    assert!(status.success(), "`{program} {}` failed ({status})", args.join(" "));
}

#[test]
fn in_chromium_the_wasm_boundary_and_the_typescript_client() {
    require("node", "apt-get install nodejs npm");
    require("npm", "apt-get install npm");
    require("wasm-opt", "apt-get install binaryen");
    require("wasm-bindgen", "cargo install wasm-bindgen-cli --version 0.2.130");
    require(CHROMEDRIVER, "apt-get install chromium chromium-driver");
    let root = workspace();
    // Its own target directory: the coverage run builds the workspace elsewhere with flags
    // the wasm build cannot take, and this keeps the browser build out of its way.
    let target = root.join("target/browser");
    let target = target.to_str().expect("a UTF-8 path");

    run(
        &root,
        "cargo",
        &["test", "-p", "switchboard-wasm", "--target", "wasm32-unknown-unknown"],
        &[
            ("CARGO_TARGET_DIR", target),
            ("CHROMEDRIVER", CHROMEDRIVER),
            ("WASM_BINDGEN_TEST_TIMEOUT", "120"),
        ],
    );

    let package = root.join("adapter-wasm");
    if !package.join("node_modules").exists() {
        run(&package, "npm", &["ci", "--no-audit", "--no-fund"], &[]);
    }
    let env = [("CARGO_TARGET_DIR", target), ("SWITCHBOARD_BIN", EXE)];
    for script in ["build", "typecheck", "size", "test"] {
        run(&package, "npm", &["run", script], &env);
    }
}
