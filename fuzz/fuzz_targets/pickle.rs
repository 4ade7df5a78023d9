#![no_main]

// candle's pickle reader panics on some malformed tensor records (short argument tuples); the
// engine catches that panic and reports a load error (`StateDict::open`), which is what a loader
// gets. libfuzzer-sys's panic hook would abort even on a caught panic, so the default hook is put
// back: a panic that escapes the entry point still aborts (libfuzzer-sys checks every call).
static QUIET_CAUGHT_PANICS: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    QUIET_CAUGHT_PANICS.call_once(|| drop(std::panic::take_hook()));
    weft::fuzzing::pickle(data)
});
