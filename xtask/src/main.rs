//! `cargo xtask`: Shoal's project automation.
//!
//! - `cargo xtask test`: formatting check, clippy with warnings denied, the crates' packaging
//!   (`cargo package`, and no SQL driver under `shoal-sharding`), and every test (unit,
//!   integration, doc), after making sure Postgres is reachable (starting the local cluster when it
//!   is down), then a short cluster run and every fuzz target for a few seconds. Fails loudly,
//!   never skips, when something it needs is missing.
//! - `cargo xtask test-cluster`: several `shoal run` processes on shared storage, load through
//!   every gateway while runners are killed, stopped, frozen, partitioned and replaced and storage
//!   is slowed, cut and restarted; checks that acknowledged work is counted exactly once and that
//!   shard ownership stays sound, also as the replies tell it (see `cluster` and
//!   docs/testing.md). `--soak 10m` draws the faults from a seed.
//! - `cargo xtask fuzz [TARGET] [--time 60s] [--runs N]`: builds the libFuzzer targets of
//!   `fuzz/` (coverage-guided, on stable Rust) and runs one, or each in turn (see `fuzz`).
//! - `cargo xtask bench [NAME]`: runs the benchmark target `NAME` (for example `storage`), or all of
//!   them, in release mode. Benchmarks print figures; they never assert timings.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cluster;
mod fuzz;
mod postgres;
mod process;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Shoal project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check formatting and lints, then run every test against memory, SQLite and Postgres.
    Test {
        /// Skip `cargo fmt --check` and clippy (tests only).
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments passed to `cargo nextest run` (for example a test name filter).
        #[arg(last = true)]
        nextest_args: Vec<String>,
    },
    /// Run a multi-process cluster under load with faults injected, and check its invariants.
    TestCluster(cluster::ClusterArgs),
    /// Fuzz the decoders of outside bytes (libFuzzer), one target or each in turn.
    Fuzz(fuzz::FuzzArgs),
    /// Run benchmarks in release mode and print their figures.
    Bench {
        /// The benchmark to run (a bench target name such as `storage`); all when omitted.
        name: Option<String>,
        /// Extra arguments passed to the benchmark binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Test {
            no_lint,
            nextest_args,
        } => test(no_lint, &nextest_args),
        Command::TestCluster(args) => cluster::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Bench { name, args } => bench(name.as_deref(), &args),
    }
}

/// How long `cargo xtask test` runs each fuzz target.
const SHORT_FUZZ_TIME: std::time::Duration = std::time::Duration::from_secs(3);

/// The fault schedule of the short cluster run in `cargo xtask test`: the default schedule
/// (SIGKILL, a duplicate address, SIGTERM, a machine-id collision, a replacement runner) and a
/// 3 s freeze (longer than the 2 s lease TTL) of the replacement; the freeze adds about 2 s to
/// the run (partitions and storage faults are left to `--faults all`: their proxies cost more).
const SHORT_CLUSTER_FAULTS: &str =
    "kill@20%,duplicate@30%,term@45%,collide@50%,start@60%,freeze@70%:3s";

/// The crates package on their own (protos and migrations inside them, metadata complete),
/// `shoal-sharding` builds without a SQL driver (its storage backends are opt-in), and the Rust
/// worker SDK (`shoal-worker-sdk`) without the sharding runtime or storage.
fn packaging() -> Result<()> {
    process::step(
        "cargo package (every published crate, without building)",
        &[
            "cargo",
            "package",
            "--workspace",
            "--exclude",
            "xtask",
            "--exclude",
            "shoal-test-support",
            "--no-verify",
            "--allow-dirty",
            "--locked",
        ],
        &[],
    )?;
    let tree = normal_dependencies("shoal-sharding")?;
    if tree.contains("sqlx") {
        anyhow::bail!(
            "shoal-sharding depends on sqlx outside its tests: storage backends must stay opt-in \
             (depend on shoal-storage without default features)"
        );
    }
    println!("<== no sqlx among them");
    let tree = normal_dependencies("shoal-worker-sdk")?;
    if let Some(runner_side) = ["shoal-sharding", "shoal-storage", "sqlx"]
        .into_iter()
        .find(|name| tree.contains(name))
    {
        anyhow::bail!(
            "shoal-worker-sdk depends on {runner_side} outside its tests: what a Rust worker \
             process links must stay free of the runner side (sharding, storage)"
        );
    }
    println!("<== no sharding runtime, storage or sqlx among them");
    Ok(())
}

/// `cargo tree -p <package> -e normal`: what the package links outside its tests.
fn normal_dependencies(package: &str) -> Result<String> {
    println!("\n==> {package}'s dependencies: cargo tree -p {package} -e normal");
    let tree = std::process::Command::new("cargo")
        .args(["tree", "-p", package, "-e", "normal", "--locked"])
        .output()
        .context("could not run cargo tree")?;
    if !tree.status.success() {
        anyhow::bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&tree.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&tree.stdout).into_owned())
}

fn test(no_lint: bool, nextest_args: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
    let database_url = postgres::ensure()?;
    let env = [("DATABASE_URL", database_url.as_str())];

    if !no_lint {
        process::step(
            "cargo fmt --check",
            &["cargo", "fmt", "--all", "--", "--check"],
            &[],
        )?;
        process::step(
            "cargo fmt --check (fuzz targets)",
            &[
                "cargo",
                "fmt",
                "--manifest-path",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/Cargo.toml"),
                "--",
                "--check",
            ],
            &[],
        )?;
        process::step(
            "cargo clippy (warnings denied)",
            &[
                "cargo",
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        )?;
        packaging()?;
    }

    let mut nextest = vec![
        "cargo",
        "nextest",
        "run",
        "--workspace",
        "--locked",
        "--profile",
        "ci",
    ];
    nextest.extend(nextest_args.iter().map(String::as_str));
    process::step("tests (cargo nextest)", &nextest, &env)?;
    process::step(
        "doc tests",
        &["cargo", "test", "--workspace", "--locked", "--doc"],
        &env,
    )?;

    // A short cluster run on the debug binary the tests already built.
    println!(
        "\n==> test-cluster (short): 3 runners on Postgres, 3,000 requests, faults: {SHORT_CLUSTER_FAULTS}"
    );
    let started_cluster = std::time::Instant::now();
    cluster::run(&cluster::ClusterArgs::short(SHORT_CLUSTER_FAULTS))?;
    println!(
        "<== test-cluster (short): ok in {:.1?}",
        started_cluster.elapsed()
    );

    // Every fuzz target briefly, from one instrumented build (its own target directory).
    fuzz::run(&fuzz::FuzzArgs::all_for(SHORT_FUZZ_TIME))?;

    println!(
        "\nxtask test: all checks passed in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

fn bench(name: Option<&str>, args: &[String]) -> Result<()> {
    let database_url = postgres::ensure()?;
    let env = [("DATABASE_URL", database_url.as_str())];
    let mut cmd = vec!["cargo", "bench", "--workspace", "--locked"];
    match name {
        Some(name) => cmd.extend(["--bench", name]),
        None => cmd.push("--benches"),
    }
    if !args.is_empty() {
        cmd.push("--");
        cmd.extend(args.iter().map(String::as_str));
    }
    let label = format!("bench {}", name.unwrap_or("(all)"));
    process::step(&label, &cmd, &env)
}
