//! Lane tokens, contexts and queued envelopes (see `shoal_fuzz::lanes`).

#![no_main]

libfuzzer_sys::fuzz_target!(init: shoal_fuzz::seeds::write_if_asked("lanes"), |data: &[u8]| shoal_fuzz::lanes::check(data));
