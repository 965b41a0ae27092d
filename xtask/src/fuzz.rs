//! `cargo xtask fuzz [TARGET] [--time 60s] [--runs N]`: builds the libFuzzer targets of `fuzz/`
//! on stable Rust (sanitizer coverage, no sanitizer, like `cargo fuzz --sanitizer none`) and runs
//! one target, or each in turn, on its corpus. Fails loudly on a crash, a timeout, a leak or an
//! allocation past the limits, with the reproducer and the command that replays it.
//!
//! - Targets: the `[[bin]]`s of `fuzz/Cargo.toml` (the fuzz crate is not a workspace member: it
//!   has its own lock file and is built in `<target dir>/fuzz`).
//! - Corpus: the committed seeds in `fuzz/corpus/<target>` are read; what the fuzzer finds goes
//!   to `fuzz/generated/<target>` (git-ignored), read again by the next run.
//! - Failures: the input is written to `fuzz/artifacts/<target>/` (git-ignored); `cargo xtask
//!   fuzz <target> --replay <file>` runs it once with a backtrace.

mod stats;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;

use stats::Stats;

/// `cargo xtask fuzz` arguments.
#[derive(Debug, Clone, Args)]
pub(crate) struct FuzzArgs {
    /// The target to run (a `[[bin]]` of `fuzz/Cargo.toml`, for example `codec`); all when
    /// omitted, one after the other.
    pub(crate) target: Option<String>,
    /// How long to run each target (`3s`, `10m`, `1h`).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) time: Duration,
    /// Stop each target after this many inputs (whichever of --time and --runs comes first).
    #[arg(long)]
    pub(crate) runs: Option<u64>,
    /// Run this one input (a reproducer) through TARGET once, with a backtrace, instead of
    /// fuzzing.
    #[arg(long, requires = "target")]
    pub(crate) replay: Option<PathBuf>,
    /// Extra arguments passed to every libFuzzer binary (for example `-max_len=65536`).
    #[arg(last = true)]
    pub(crate) libfuzzer_args: Vec<String>,
}

impl FuzzArgs {
    /// Every target for `time` each (the brief run of `cargo xtask test`).
    pub(crate) fn all_for(time: Duration) -> Self {
        Self {
            target: None,
            time,
            runs: None,
            replay: None,
            libfuzzer_args: Vec::new(),
        }
    }
}

/// Sanitizer coverage for libFuzzer without a sanitizer, as `cargo fuzz --sanitizer none`
/// builds: 8-bit counters, a PC table and traced comparisons, with `cfg(fuzzing)`, debug
/// assertions and overflow checks on. Works on stable rustc (no `-Z` flag).
const RUSTFLAGS: &[&str] = &[
    "--cfg",
    "fuzzing",
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

/// libFuzzer's limits: an input that runs over 10 s or a process over 2 GiB of resident memory
/// is a failure. (`-malloc_limit_mb` needs a sanitizer's malloc hooks, so the targets' own
/// allocator aborts on any single allocation over 256 MiB instead; see `fuzz/src/alloc.rs`.)
const LIMITS: &[&str] = &["-timeout=10", "-rss_limit_mb=2048", "-malloc_limit_mb=2048"];

/// What `cargo run` sets for the program it runs (besides `CARGO_PKG_*`).
const RUN_VARIABLES: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
];

/// Lines of libFuzzer's output kept to show when a target fails.
const TAIL_LINES: usize = 60;

/// Paths of the fuzz crate and of its build.
struct Layout {
    root: PathBuf,
    crate_dir: PathBuf,
    target_dir: PathBuf,
    triple: String,
}

impl Layout {
    fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let workspace_target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|dir| {
                if dir.is_absolute() {
                    dir
                } else {
                    root.join(dir)
                }
            })
            .unwrap_or_else(|| root.join("target"));
        Ok(Self {
            crate_dir: root.join("fuzz"),
            target_dir: workspace_target.join("fuzz"),
            triple: host_triple()?,
            root,
        })
    }

    fn binary(&self, target: &str) -> PathBuf {
        self.target_dir
            .join(&self.triple)
            .join("release")
            .join(target)
    }

    fn seeds(&self, target: &str) -> PathBuf {
        self.crate_dir.join("corpus").join(target)
    }

    fn generated(&self, target: &str) -> PathBuf {
        self.crate_dir.join("generated").join(target)
    }

    fn artifacts(&self, target: &str) -> PathBuf {
        self.crate_dir.join("artifacts").join(target)
    }

    /// `path` relative to the repository root when it is inside it (for commands to copy).
    fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

/// The host's target triple (the fuzz build names it so that `RUSTFLAGS` reach only the
/// targets' code, not build scripts and proc macros).
fn host_triple() -> Result<String> {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("could not run `rustc -vV`")?;
    ensure!(output.status.success(), "`rustc -vV` failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` printed no host triple")
}

/// The `[[bin]]` names of `fuzz/Cargo.toml`, in order.
fn targets(manifest: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("could not read {}", manifest.display()))?;
    let mut targets = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(value) = line.strip_prefix("name") {
            let name = value.trim_start().trim_start_matches('=').trim();
            targets.push(name.trim_matches('"').to_owned());
        }
    }
    ensure!(
        !targets.is_empty(),
        "{} declares no [[bin]] target",
        manifest.display()
    );
    Ok(targets)
}

/// Builds every target in one `cargo build` (dependencies compiled once, instrumented).
fn build(layout: &Layout) -> Result<()> {
    let manifest = layout.crate_dir.join("Cargo.toml");
    println!(
        "\n==> fuzz build: cargo build --release --locked --manifest-path {} --target {} --bins \
         (RUSTFLAGS: sanitizer coverage; target dir {})",
        layout.show(&manifest),
        layout.triple,
        layout.show(&layout.target_dir)
    );
    let started = Instant::now();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cargo
        .args([
            "build",
            "--release",
            "--locked",
            "--bins",
            "--manifest-path",
        ])
        .arg(&manifest)
        .args(["--target", &layout.triple])
        .env("CARGO_TARGET_DIR", &layout.target_dir)
        .env("RUSTFLAGS", RUSTFLAGS.join(" "))
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    // `cargo run` gives xtask its package's variables; some build scripts (ring's) rerun when
    // they change, so the build would differ from one made outside xtask.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || RUN_VARIABLES.contains(&name.as_ref()) {
            cargo.env_remove(name.as_ref());
        }
    }
    let status = cargo.status().context("could not start cargo")?;
    ensure!(
        status.success(),
        "the fuzz build failed ({status}) after {:.1?}",
        started.elapsed()
    );
    println!("<== fuzz build: ok in {:.1?}", started.elapsed());
    Ok(())
}

/// One target's run, for the summary.
struct Outcome {
    target: String,
    stats: Stats,
    elapsed: Duration,
}

/// Runs `target` for `args.time` (or `args.runs` inputs); fails with the reproducer when
/// libFuzzer reports a failure.
fn run_target(layout: &Layout, target: &str, args: &FuzzArgs) -> Result<Outcome> {
    let seeds = layout.seeds(target);
    ensure!(
        seeds.is_dir() && std::fs::read_dir(&seeds)?.next().is_some(),
        "no seed corpus for `{target}`: {} must hold at least one input",
        layout.show(&seeds)
    );
    let generated = layout.generated(target);
    let artifacts = layout.artifacts(target);
    std::fs::create_dir_all(&generated)?;
    std::fs::create_dir_all(&artifacts)?;
    let binary = layout.binary(target);
    let mut command = Command::new(&binary);
    // New inputs go to the first directory; both are read.
    command
        .arg(&generated)
        .arg(&seeds)
        .arg(format!("-max_total_time={}", args.time.as_secs().max(1)))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(LIMITS)
        .args(["-print_final_stats=1", "-print_pcs=0", "-reload=0"]);
    if let Some(runs) = args.runs {
        command.arg(format!("-runs={runs}"));
    }
    command
        .args(&args.libfuzzer_args)
        .current_dir(&layout.root)
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    println!(
        "\n==> fuzz {target}: {} (up to {:?}{})",
        layout.show(&binary),
        args.time,
        args.runs
            .map(|r| format!(" or {r} inputs"))
            .unwrap_or_default()
    );
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start {}", binary.display()))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let mut stats = Stats::default();
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let mut last_progress = Instant::now();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        let status = stats.read(&line);
        let notable = line.contains("INITED") || line.contains("DONE");
        if notable || (status && last_progress.elapsed() >= Duration::from_secs(10)) {
            last_progress = Instant::now();
            println!(
                "    [{target}] {:>6.0?}: {} inputs, {} exec/s, cov {}, ft {}, corpus {}, rss {} MB",
                started.elapsed(),
                stats.runs,
                stats.exec_per_sec,
                stats.coverage,
                stats.features,
                stats.corpus,
                stats.peak_rss_mb
            );
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().context("waiting for the fuzzer")?;
    let elapsed = started.elapsed();
    if !status.success() || stats.failure.is_some() || stats.reproducer.is_some() {
        eprintln!("\n---- last lines of the `{target}` fuzzer's output ----");
        for line in &tail {
            eprintln!("{line}");
        }
        eprintln!("---- end ----");
        let what = stats
            .failure
            .clone()
            .unwrap_or_else(|| format!("the fuzzer exited with {status}"));
        match &stats.reproducer {
            Some(reproducer) => {
                let reproducer = layout.show(Path::new(reproducer));
                bail!(
                    "fuzz target `{target}` failed after {} inputs: {what}\n  reproducer: \
                     {reproducer}\n  replay it:  cargo xtask fuzz {target} --replay \
                     {reproducer}\n  (or run the binary on it: {} {reproducer})",
                    stats.runs,
                    layout.show(&binary)
                )
            }
            None => bail!(
                "fuzz target `{target}` failed after {} inputs: {what} (no reproducer was written)",
                stats.runs
            ),
        }
    }
    println!(
        "<== fuzz {target}: ok: {} inputs in {elapsed:.1?}, {} exec/s, coverage {} (features \
         {}), corpus {}, peak rss {} MB, no crash",
        stats.runs,
        stats.exec_per_sec,
        stats.coverage,
        stats.features,
        stats.corpus,
        stats.peak_rss_mb
    );
    Ok(Outcome {
        target: target.to_owned(),
        stats,
        elapsed,
    })
}

/// Runs one input through `target` once.
fn replay(layout: &Layout, target: &str, input: &Path) -> Result<()> {
    ensure!(input.is_file(), "{} is not a file", input.display());
    let binary = layout.binary(target);
    println!(
        "\n==> replay {}: {}",
        layout.show(input),
        layout.show(&binary)
    );
    let status = Command::new(&binary)
        .arg(input)
        .current_dir(&layout.root)
        .env("RUST_BACKTRACE", "1")
        .status()
        .with_context(|| format!("could not start {}", binary.display()))?;
    ensure!(
        status.success(),
        "`{target}` fails on {} ({status})",
        layout.show(input)
    );
    println!("<== replay: `{target}` passes on {}", layout.show(input));
    Ok(())
}

/// `cargo xtask fuzz`.
pub(crate) fn run(args: &FuzzArgs) -> Result<()> {
    let layout = Layout::new()?;
    let all = targets(&layout.crate_dir.join("Cargo.toml"))?;
    let chosen = match &args.target {
        Some(target) if all.contains(target) => vec![target.clone()],
        Some(target) => bail!(
            "no fuzz target `{target}`; the targets are: {}",
            all.join(", ")
        ),
        None => all,
    };
    build(&layout)?;
    if let (Some(input), Some(target)) = (&args.replay, &args.target) {
        return replay(&layout, target, input);
    }
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for target in &chosen {
        outcomes.push(run_target(&layout, target, args)?);
    }
    println!("\nfuzz summary ({:.0?} in all):", started.elapsed());
    println!(
        "  {:<10} {:>12} {:>9} {:>8} {:>9} {:>7} {:>8}  crashes",
        "target", "inputs", "time", "exec/s", "coverage", "corpus", "rss MB"
    );
    for outcome in &outcomes {
        let s = &outcome.stats;
        println!(
            "  {:<10} {:>12} {:>9.1?} {:>8} {:>9} {:>7} {:>8}  0",
            outcome.target,
            s.runs,
            outcome.elapsed,
            s.exec_per_sec,
            s.coverage,
            s.corpus,
            s.peak_rss_mb
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn targets_are_the_bins_of_the_manifest() {
        let dir = std::env::temp_dir().join(format!("xtask-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = dir.join("Cargo.toml");
        std::fs::write(
            &manifest,
            "[package]\nname = \"f\"\n\n[[bin]]\nname = \"codec\"\npath = \"a.rs\"\n\n\
             [[bin]]\nname=\"config\"\n[profile.release]\n",
        )
        .unwrap();
        assert_eq!(targets(&manifest).unwrap(), ["codec", "config"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
