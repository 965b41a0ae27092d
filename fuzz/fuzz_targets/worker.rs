//! What a worker process sends the runner (see `shoal_fuzz::worker`).

#![no_main]

libfuzzer_sys::fuzz_target!(init: shoal_fuzz::seeds::write_if_asked("worker"), |data: &[u8]| shoal_fuzz::worker::check(data));
