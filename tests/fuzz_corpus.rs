//! The fuzz targets (`fuzz/`, run by hand with cargo-fuzz on nightly) on stable Rust: every file
//! of the committed corpus (`fuzz/corpus/<target>/`, seeds and crash inputs found so far) goes
//! through its target, then random mutations of them for a bounded time per target. The mutator
//! is a plain deterministic one (bit flips, byte changes, insertions, deletions, copies, splices
//! and interesting numbers, from a seeded xorshift), not coverage-guided: it catches regressions
//! and shallow bugs, cargo-fuzz finds the deep ones. `WEFT_FUZZ_SECONDS` sets the time per target
//! (default 2), `WEFT_FUZZ_SEED` the seed (default fixed, so a run is repeatable).
//!
//! Each input must return without panicking and within [`MAX_INPUT_TIME`]; a failing input is
//! written under the system's temporary folder and its path is in the failure.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft::fuzzing::TARGETS;

/// The longest any one input may take (a debug build; real inputs take milliseconds).
const MAX_INPUT_TIME: Duration = Duration::from_secs(5);
/// The largest input the mutator makes.
const MAX_INPUT_LEN: usize = 64 << 10;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// Runs a target's inputs on a thread of its own, so that one that hangs is caught.
struct Runner {
    target: &'static str,
    inputs: std::sync::mpsc::Sender<Vec<u8>>,
    outcomes: std::sync::mpsc::Receiver<bool>,
}

impl Runner {
    fn new(target: &'static str, run: fn(&[u8])) -> Runner {
        let (inputs, to_run) = std::sync::mpsc::channel::<Vec<u8>>();
        let (done, outcomes) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for input in to_run {
                let outcome = catch_unwind(AssertUnwindSafe(|| run(&input)));
                if done.send(outcome.is_ok()).is_err() {
                    break;
                }
            }
        });
        Runner {
            target,
            inputs,
            outcomes,
        }
    }

    /// Runs one input; panics (naming a file holding the input) if it panics or does not return
    /// within [`MAX_INPUT_TIME`] (a hang is left behind on the runner's thread).
    fn run(&self, input: &[u8]) {
        use std::sync::mpsc::RecvTimeoutError;
        let sent = self.inputs.send(input.to_vec()).is_ok();
        let failure = match self.outcomes.recv_timeout(MAX_INPUT_TIME) {
            Ok(true) if sent => return,
            Ok(_) | Err(RecvTimeoutError::Disconnected) => "panicked".to_owned(),
            Err(RecvTimeoutError::Timeout) => format!("did not return in {MAX_INPUT_TIME:?}"),
        };
        let path = std::env::temp_dir().join(format!(
            "weft-fuzz-{}-{:016x}",
            self.target,
            input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        ));
        let _ = std::fs::write(&path, input);
        panic!(
            "{}: {failure} on the input saved at {} ({} bytes)",
            self.target,
            path.display(),
            input.len()
        );
    }
}

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Byte strings parsers treat specially: JSON syntax and numbers, PNG and pickle opcodes, sizes.
const INTERESTING: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"null",
    b"-1",
    b"1e308",
    b"NaN",
    b"\\u0000",
    b"4294967296",
    b"9007199254740993",
    b"\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x02",
    b"h\x00",
    b"q\x00",
    b"(",
    b"t",
    b".",
    b"IDAT",
    b"zTXt",
    b"iTXt",
    b"\r\n",
    b"--weftfuzzboundary",
    b"filename=\"",
    b"\x81\xfe",
    b"\x88\x80",
];

/// One random change to `input`; `other` is another corpus entry to splice from.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    let at = |rng: &mut Rng, len: usize| rng.below(len + 1);
    match rng.below(8) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = rng.next() as u8;
        }
        2 => {
            let i = at(rng, input.len());
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            input.splice(i..i, bytes);
        }
        3 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = 1 + rng.below((input.len() - i).min(64));
            input.drain(i..i + n);
        }
        4 if !input.is_empty() => {
            // Copy a run of the input elsewhere (repeats structure: nesting, chunks, frames).
            let i = rng.below(input.len());
            let n = 1 + rng.below((input.len() - i).min(256));
            let run = input[i..i + n].to_vec();
            let to = at(rng, input.len());
            input.splice(to..to, run);
        }
        5 if !other.is_empty() => {
            let i = rng.below(other.len());
            let n = 1 + rng.below((other.len() - i).min(256));
            let to = at(rng, input.len());
            input.splice(to..to, other[i..i + n].iter().copied());
        }
        6 => {
            let token = INTERESTING[rng.below(INTERESTING.len())];
            let i = at(rng, input.len());
            input.splice(i..i, token.iter().copied());
        }
        _ if input.len() >= 4 => {
            // Overwrite four bytes with a little- or big-endian boundary value (lengths, sizes).
            let value = [0u32, 1, 0x7f, 0xff, 0xffff, 0x7fff_ffff, u32::MAX][rng.below(7)];
            let bytes = if rng.below(2) == 0 {
                value.to_le_bytes()
            } else {
                value.to_be_bytes()
            };
            let i = rng.below(input.len() - 3);
            input[i..i + 4].copy_from_slice(&bytes);
        }
        _ => input.push(rng.next() as u8),
    }
    input.truncate(MAX_INPUT_LEN);
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_mutations_of_it() {
    let seconds: f64 = std::env::var("WEFT_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let seed: u64 = std::env::var("WEFT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d);
    for (target, run) in TARGETS {
        let corpus = corpus(target);
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} is empty");
        let runner = Runner::new(target, *run);
        for input in &corpus {
            runner.run(input);
        }
        let mut rng = Rng(seed ^ target.len() as u64 ^ 0x9e37_79b9_7f4a_7c15);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut runs = 0u64;
        while Instant::now() < deadline {
            let mut input = corpus[rng.below(corpus.len())].clone();
            let other = &corpus[rng.below(corpus.len())];
            for _ in 0..1 + rng.below(8) {
                mutate(&mut rng, &mut input, other);
            }
            runner.run(&input);
            runs += 1;
        }
        eprintln!("{target}: {} corpus files, {runs} mutations", corpus.len());
    }
}
