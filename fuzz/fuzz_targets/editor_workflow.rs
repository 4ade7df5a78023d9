#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft::fuzzing::editor_workflow(data));
