//! `--compare OTHER`: the same measurement of two server binaries, alternating, in one go, and
//! the ratio of each figure. On a shared, noisy machine a figure alone moves by a tenth from
//! one run to the next; two binaries measured in turn, several times, still compare.

use std::path::Path;
use std::process::Command;

/// Reads a figure from a run's JSON report.
type Read = fn(&serde_json::Value) -> Option<f64>;

/// The figures compared: a name, where it is in the JSON report, and whether more is better.
const FIGURES: [(&str, Read, bool); 7] = [
    ("connects per second", |r| r["connects_per_second"].as_f64(), true),
    ("connects per server CPU-second", |r| r["connects_per_cpu_second"].as_f64(), true),
    ("idle KiB per connection", |r| r["idle_kib_per_connection"].as_f64(), false),
    ("fan-out 1 × 1 000 per server CPU-second", |r| per_cpu(&r["fan_out_1x1000"]), true),
    (
        "fixed-rate 1 × 1 000 p99 (ms)",
        |r| Some(r["fixed_rate_1x1000"]["p99_us"].as_f64()? / 1e3),
        false,
    ),
    ("fixed-rate 1 × 1 000 per server CPU-second", |r| per_cpu(&r["fixed_rate_1x1000"]), true),
    ("fan-out 100 × 10 per server CPU-second", |r| per_cpu(&r["fan_out_100x10"]), true),
];

fn per_cpu(phase: &serde_json::Value) -> Option<f64> {
    Some(phase["deliveries"].as_f64()? / phase["cpu_seconds"].as_f64()?.max(0.01))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs this program `rounds` times on each of the servers A and B (`binaries`, with
/// `threads` hubs each; A B, then B A, ...), each run with the command line it was given minus
/// `--compare`, `--rounds`, `--json` and the threads, and prints the medians and B / A. Exits
/// non-zero if a run failed (a run that lost a delivery fails).
pub fn compare(binaries: [&Path; 2], threads: [usize; 2], rounds: usize) {
    const OWN: [&str; 6] =
        ["--compare", "--rounds", "--json", "--server", "--server-threads", "--compare-threads"];
    let mut passed: Vec<String> = Vec::new();
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        match word.as_str() {
            w if OWN.contains(&w) => {
                words.next();
            }
            w if OWN.iter().any(|own| w.starts_with(&format!("{own}="))) => {}
            _ => passed.push(word),
        }
    }
    let [a, b] = binaries;
    let this = std::env::current_exe().expect("this program's path");
    let mut reports: [Vec<serde_json::Value>; 2] = Default::default();
    for round in 0..rounds.max(1) {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let (label, binary) = [("A", a), ("B", b)][which];
            let hubs = threads[which];
            eprintln!(
                "round {} of {rounds}: {label} ({}, {hubs} threads)",
                round + 1,
                binary.display()
            );
            let json = std::env::temp_dir()
                .join(format!("switchboard-compare-{}-{round}-{label}.json", std::process::id()));
            let status = Command::new(&this)
                .args(&passed)
                .arg("--server")
                .arg(binary)
                .arg("--server-threads")
                .arg(hubs.to_string())
                .arg("--json")
                .arg(&json)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("a run starts");
            let report = std::fs::read_to_string(&json).ok();
            let _ = std::fs::remove_file(&json);
            if !status.success() {
                eprintln!("FAILED: run {label} of round {} ({status})", round + 1);
                std::process::exit(1);
            }
            let report = report.and_then(|text| serde_json::from_str(&text).ok());
            reports[which].push(report.expect("a run writes its JSON report"));
        }
    }
    println!();
    println!(
        "| figure (median of {rounds}) | A: {} ({} threads) | B: {} ({} threads) | B / A |",
        a.display(),
        threads[0],
        b.display(),
        threads[1]
    );
    println!("|---|---|---|---|");
    for (name, figure, more_is_better) in FIGURES {
        let [of_a, of_b] = [0, 1].map(|i| median(reports[i].iter().filter_map(figure).collect()));
        let ratio = of_b / of_a;
        let better = match ratio {
            r if (r - 1.0).abs() < 0.005 => "same",
            r if (r > 1.0) == more_is_better => "better",
            _ => "worse",
        };
        println!("| {name} | {of_a:.2} | {of_b:.2} | {ratio:.3} ({better}) |");
    }
}
