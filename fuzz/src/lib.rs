//! The checks behind Shoal's fuzz targets (`fuzz_targets/*.rs`): each module reads untrusted
//! bytes with the function production uses and asserts what must hold of the result, panicking
//! (a crash for libFuzzer) when it does not. Built and run by `cargo xtask fuzz`; see
//! `docs/testing.md`, "Fuzzing".

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod alloc;
pub mod codec;
pub mod config;
pub mod gateway;
pub mod lanes;
pub mod launcher;
pub mod protocol;
pub mod seeds;
pub mod worker;

#[global_allocator]
static ALLOCATOR: alloc::Limited = alloc::Limited;
