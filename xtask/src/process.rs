//! Running child commands with progress output.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Runs `argv` with extra environment, printing a header before and the duration after; fails
/// with the command line when it exits unsuccessfully.
pub(crate) fn step(label: &str, argv: &[&str], env: &[(&str, &str)]) -> Result<()> {
    println!("\n==> {label}: {}", argv.join(" "));
    let started = Instant::now();
    let (program, args) = argv.split_first().context("empty command line")?;
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("could not start `{program}`"))?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!(
            "{label} failed ({status}) after {elapsed:.1?}: {}",
            argv.join(" ")
        );
    }
    println!("<== {label}: ok in {elapsed:.1?}");
    Ok(())
}
