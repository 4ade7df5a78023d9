//! The guard every pickled tensor file passes before candle's pickle reader sees it
//! (`StateDict::open` runs it for each `.ckpt`/`.pt`/`.pth`/`.bin`: checkpoints, VAEs,
//! ControlNets, LoRAs, text encoders, and the header reads of `/api/weft/generate`).
//!
//! candle's reader never executes anything, but it silently drops entries built from unknown
//! globals, allocates whatever length a string opcode claims, deep-copies memoised objects on
//! every `BINPUT` and `BINGET`, and frees nested objects recursively, so a crafted pickle of a
//! few hundred bytes can fill memory (a "memo bomb": one large list fetched from the memo again
//! and again) or overflow the stack. This pass walks the opcodes of each `data.pkl` without
//! building objects, mirroring what candle's reader would build, and refuses:
//! - opcodes candle does not know, and globals a tensor file never needs (`os.system`, ...);
//! - lengths past the end of the data, compressed pickles, pickles over [`MAX_PICKLE_BYTES`];
//! - more than [`MAX_OPCODES`] opcodes, more than [`MAX_MEMO_ENTRIES`] memo entries, a stack
//!   deeper than [`MAX_STACK`], objects nested deeper than [`MAX_DEPTH`];
//! - building (copies made by the memo included) more objects than the pickle's size allows:
//!   [`OBJECTS_FLOOR`] plus [`OBJECTS_PER_BYTE`] per pickle byte, never over [`MAX_OBJECTS`].
//!   Since every object candle holds was built, this bounds both its memory and its time.
//!
//! Each refusal says which opcode, global or limit, and at which byte.

use std::collections::HashMap;
use std::path::Path;

/// The most objects candle's reader may build for one pickle, however large (a torch state dict
/// needs a few dozen per tensor, so this allows well over 100k tensors while bounding memory to
/// well under 1 GB).
pub(crate) const MAX_OBJECTS: u64 = 5_000_000;
/// Objects any pickle may build, whatever its size.
pub(crate) const OBJECTS_FLOOR: u64 = 100_000;
/// Objects a pickle may build per byte of pickle (a torch pickle builds about one per 5 bytes;
/// only memo copies build more, and a real file copies globals and small tuples).
pub(crate) const OBJECTS_PER_BYTE: u64 = 16;
/// The largest `data.pkl` read (a state dict of 100k tensors pickles to ~20 MB).
pub(crate) const MAX_PICKLE_BYTES: u64 = 256 * 1024 * 1024;
/// The most opcodes walked in one pickle.
pub(crate) const MAX_OPCODES: u64 = 64 * 1024 * 1024;
/// The most distinct memo entries.
pub(crate) const MAX_MEMO_ENTRIES: usize = 4_000_000;
/// The deepest stack.
pub(crate) const MAX_STACK: usize = 1_000_000;
/// The deepest nesting of objects (a state dict nests about 6 deep; candle clones and drops
/// nested objects recursively, so deep nesting would overflow the thread's stack).
pub(crate) const MAX_DEPTH: u32 = 200;

/// The globals a torch state dict uses.
fn allowed_global(module: &str, name: &str) -> bool {
    match module {
        "collections" => name == "OrderedDict",
        "torch._utils" => name.starts_with("_rebuild_"),
        "torch._tensor" => name == "_rebuild_from_type_v2",
        "torch" => name.ends_with("Storage") || name == "Size" || name == "device",
        "torch.serialization" => name == "_get_layout",
        _ => false,
    }
}

/// Checks every `data.pkl` of the torch zip at `path`; `Err` says what is wrong. The archive is
/// read with the `zip` crate, the reader candle itself uses, so both see the same entries.
pub(crate) fn check_zip_pickle(path: &Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| format!("not a valid zip archive: {e}"))?;
    let names = archive
        .file_names()
        .map(|name| name.map(|n| n.into_owned()))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| format!("not a valid zip archive: {e}"))?;
    let pickles: Vec<String> = names
        .into_iter()
        .filter(|name| name.ends_with("data.pkl"))
        .collect();
    if pickles.is_empty() {
        return Err("the zip archive holds no data.pkl".into());
    }
    for name in pickles {
        let entry = archive
            .by_name(&name)
            .map_err(|e| format!("cannot read '{name}': {e}"))?;
        if entry.size() > MAX_PICKLE_BYTES {
            return Err(format!(
                "'{name}' is a pickle of {} bytes, over the {MAX_PICKLE_BYTES} allowed",
                entry.size()
            ));
        }
        if entry.compression() != zip::CompressionMethod::Stored {
            return Err(format!(
                "'{name}' is compressed ({}); torch stores its pickles uncompressed",
                entry.compression()
            ));
        }
        let mut data = Vec::with_capacity(entry.size() as usize);
        // At most the size checked above, whatever the entry claims while it is read.
        std::io::Read::read_to_end(&mut std::io::Read::take(entry, MAX_PICKLE_BYTES), &mut data)
            .map_err(|e| format!("cannot read '{name}': {e}"))?;
        check_pickle(&data).map_err(|e| format!("'{name}': {e}"))?;
    }
    Ok(())
}

/// What one stack slot or memo entry stands for in candle's reader.
#[derive(Clone, Copy)]
struct Obj {
    /// Objects it holds, itself included (what a copy of it builds).
    size: u64,
    /// How deeply it nests (1 for a scalar).
    depth: u32,
}

impl Obj {
    const SCALAR: Obj = Obj { size: 1, depth: 1 };

    /// A new container holding `parts`.
    fn holding(parts: &[Obj]) -> Obj {
        parts.iter().fold(Obj::SCALAR, |o, p| Obj {
            size: o.size.saturating_add(p.size),
            depth: o.depth.max(p.depth.saturating_add(1)),
        })
    }
}

/// Walks the opcodes candle's reader understands, tracking what each stack slot and memo entry
/// stands for and how many objects the reader would build (memo copies included).
pub(crate) fn check_pickle(data: &[u8]) -> Result<(), String> {
    let budget = OBJECTS_FLOOR
        .saturating_add(OBJECTS_PER_BYTE.saturating_mul(data.len() as u64))
        .min(MAX_OBJECTS);
    // None marks a MARK on the stack.
    let mut stack: Vec<Option<Obj>> = Vec::new();
    let mut memo: HashMap<u32, Obj> = HashMap::new();
    let mut built = 0u64;
    let mut opcodes = 0u64;
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], String> {
        let bytes = data
            .get(*pos..pos.saturating_add(n))
            .ok_or_else(|| format!("opcode argument at byte {pos} runs past the end"))?;
        *pos += n;
        Ok(bytes)
    };
    let line = |pos: &mut usize| -> Result<String, String> {
        let rest = data.get(*pos..).unwrap_or_default();
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("unterminated global name at byte {pos}"))?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        *pos += end + 1;
        Ok(text)
    };
    fn pop(stack: &mut Vec<Option<Obj>>) -> Result<Obj, String> {
        stack
            .pop()
            .flatten()
            .ok_or_else(|| "pickle pops an empty stack".to_string())
    }
    fn pop_to_mark(stack: &mut Vec<Option<Obj>>) -> Result<Vec<Obj>, String> {
        let mark = stack
            .iter()
            .rposition(Option::is_none)
            .ok_or_else(|| "pickle has no matching mark".to_string())?;
        let parts = stack.split_off(mark + 1).into_iter().flatten().collect();
        stack.pop();
        Ok(parts)
    }
    fn u32_arg(bytes: &[u8]) -> u32 {
        u32::from_le_bytes(bytes.try_into().unwrap_or([0; 4]))
    }
    loop {
        let at = pos;
        opcodes += 1;
        if opcodes > MAX_OPCODES {
            return Err(format!(
                "the pickle runs past {MAX_OPCODES} opcodes (at byte {at})"
            ));
        }
        let op = *take(&mut pos, 1)?.first().unwrap_or(&0);
        // What the opcode pushes, and how many objects the reader builds for it.
        let (pushed, cost): (Option<Obj>, u64) = match op {
            0x80 => {
                take(&mut pos, 1)?;
                (None, 0)
            }
            b'c' => {
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                if !allowed_global(&module, &name) {
                    return Err(format!(
                        "global '{module}.{name}' at byte {at} is not part of a tensor file"
                    ));
                }
                (Some(Obj::SCALAR), 1)
            }
            b'q' | b'r' => {
                let id = if op == b'q' {
                    u32::from(take(&mut pos, 1)?[0])
                } else {
                    u32_arg(take(&mut pos, 4)?)
                };
                // candle copies the top of the stack into the memo.
                let top = stack.last().copied().flatten().ok_or_else(|| {
                    format!("memo {id} written at byte {at} from an empty stack or a mark")
                })?;
                memo.insert(id, top);
                if memo.len() > MAX_MEMO_ENTRIES {
                    return Err(format!(
                        "the pickle's memo grows past {MAX_MEMO_ENTRIES} entries (at byte {at})"
                    ));
                }
                (None, top.size)
            }
            b'h' | b'j' => {
                let id = if op == b'h' {
                    u32::from(take(&mut pos, 1)?[0])
                } else {
                    u32_arg(take(&mut pos, 4)?)
                };
                let entry = *memo
                    .get(&id)
                    .ok_or_else(|| format!("memo {id} read at byte {at} was never written"))?;
                // ...and copies the entry out again on every read.
                (Some(entry), entry.size)
            }
            b'X' => {
                let len = u32_arg(take(&mut pos, 4)?);
                take(&mut pos, len as usize)?;
                (Some(Obj::SCALAR), 1)
            }
            b'J' => {
                take(&mut pos, 4)?;
                (Some(Obj::SCALAR), 1)
            }
            b'K' => {
                take(&mut pos, 1)?;
                (Some(Obj::SCALAR), 1)
            }
            b'M' => {
                take(&mut pos, 2)?;
                (Some(Obj::SCALAR), 1)
            }
            b'G' => {
                take(&mut pos, 8)?;
                (Some(Obj::SCALAR), 1)
            }
            0x8a => {
                let len = take(&mut pos, 1)?[0];
                take(&mut pos, usize::from(len))?;
                (Some(Obj::SCALAR), 1)
            }
            // candle reads DICT ('d') as an empty dict, without popping to the mark.
            b')' | b'N' | 0x88 | 0x89 | b'}' | b'd' | b']' => (Some(Obj::SCALAR), 1),
            b'(' => {
                stack.push(None);
                (None, 1)
            }
            b'Q' | 0x85 => (Some(Obj::holding(&[pop(&mut stack)?])), 1),
            b't' => (Some(Obj::holding(&pop_to_mark(&mut stack)?)), 1),
            0x86 => {
                let parts = [pop(&mut stack)?, pop(&mut stack)?];
                (Some(Obj::holding(&parts)), 1)
            }
            0x87 => {
                let parts = [pop(&mut stack)?, pop(&mut stack)?, pop(&mut stack)?];
                (Some(Obj::holding(&parts)), 1)
            }
            b'R' | b'b' | 0x81 => {
                let parts = [pop(&mut stack)?, pop(&mut stack)?];
                (Some(Obj::holding(&parts)), 1)
            }
            // Appending moves objects into the container below them; nothing new is built.
            b'a' => {
                let value = pop(&mut stack)?;
                let list = pop(&mut stack)?;
                (Some(Obj::holding(&[list, value])), 0)
            }
            b's' => {
                let parts = [pop(&mut stack)?, pop(&mut stack)?];
                let dict = pop(&mut stack)?;
                let mut all = vec![dict];
                all.extend(parts);
                (Some(Obj::holding(&all)), 0)
            }
            b'e' | b'u' => {
                let mut values = pop_to_mark(&mut stack)?;
                values.push(pop(&mut stack)?);
                (Some(Obj::holding(&values)), 0)
            }
            b'.' => return Ok(()),
            other => {
                return Err(format!(
                    "opcode 0x{other:02x} at byte {at} is not supported by the tensor reader"
                ))
            }
        };
        built = built.saturating_add(cost);
        if built > budget {
            return Err(format!(
                "the pickle builds more than {budget} objects from {} bytes (at byte {at}); \
                 a memo or expansion bomb",
                data.len()
            ));
        }
        if let Some(obj) = pushed {
            if obj.size > MAX_OBJECTS {
                return Err(format!(
                    "the pickle expands to more than {MAX_OBJECTS} objects (at byte {at})"
                ));
            }
            if obj.depth > MAX_DEPTH {
                return Err(format!(
                    "the pickle nests objects more than {MAX_DEPTH} deep (at byte {at})"
                ));
            }
            stack.push(Some(obj));
        }
        if stack.len() > MAX_STACK {
            return Err(format!(
                "the pickle's stack grows past {MAX_STACK} entries (at byte {at})"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::torch_zip;

    #[test]
    fn refuses_foreign_globals_and_unknown_opcodes() {
        let evil = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsR.";
        let err = check_pickle(evil).unwrap_err();
        assert!(err.contains("os.system"), "{err}");
        let err = check_pickle(b"\x80\x02\x95.").unwrap_err();
        assert!(err.contains("0x95"), "{err}");
    }

    #[test]
    fn refuses_memo_bombs() {
        // [x], then 40 times: put, [get, get] -> 2^40 objects once copied.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            p.extend_from_slice(b"(h\x00h\x00tq\x00");
        }
        p.push(b'.');
        let err = check_pickle(&p).unwrap_err();
        assert!(err.contains("bomb") || err.contains("expands"), "{err}");
    }

    /// The 644-byte bomb of the security review's kind: a list doubled 22 times through the memo
    /// (4M objects), then fetched from the memo again and again, each fetch a full copy in
    /// candle's reader. Each object alone stays under the size cap; the total does not.
    pub(crate) fn memo_bomb() -> Vec<u8> {
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..22 {
            p.extend_from_slice(b"(h\x00h\x00tq\x00");
        }
        while p.len() < 643 {
            p.extend_from_slice(b"h\x00");
        }
        p.push(b'.');
        p
    }

    #[test]
    fn refuses_a_memo_bomb_of_repeated_copies() {
        let bomb = memo_bomb();
        assert_eq!(bomb.len(), 644);
        let err = check_pickle(&bomb).unwrap_err();
        assert!(err.contains("memo or expansion bomb"), "{err}");
        // Without the doubling, repeated copies of a large list still hit the budget.
        let mut p = b"\x80\x02](".to_vec();
        for _ in 0..20_000 {
            p.extend_from_slice(b"K\x01");
        }
        p.extend_from_slice(b"eq\x00");
        for _ in 0..20_000 {
            p.extend_from_slice(b"h\x00");
        }
        p.push(b'.');
        let err = check_pickle(&p).unwrap_err();
        assert!(err.contains("bomb"), "{err}");
    }

    #[test]
    fn refuses_deep_nesting() {
        let mut p = b"\x80\x02)".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 100_000));
        p.push(b'.');
        let err = check_pickle(&p).unwrap_err();
        assert!(err.contains("deep"), "{err}");
    }

    #[test]
    fn every_pickled_file_is_guarded_at_the_loading_boundary() {
        use crate::load::file::StateDict;
        use crate::load::LoadErrorKind;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.ckpt");
        std::fs::write(&path, torch_zip(&memo_bomb())).unwrap();
        let hwm = || -> Option<u64> {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        let before = hwm();
        let start = std::time::Instant::now();
        let err = StateDict::open(&path).unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_secs(2), "{err}");
        assert!(matches!(err.kind, LoadErrorKind::UnsafePickle(_)), "{err}");
        let message = err.to_string();
        assert!(message.contains("bomb.ckpt"), "{message}");
        assert!(message.contains("refusing the pickle"), "{message}");
        assert!(message.contains("memo or expansion bomb"), "{message}");
        println!("{message}");
        // The process's peak memory did not move by more than the test harness's noise.
        if let (Some(before), Some(after)) = (before, hwm()) {
            assert!(
                after.saturating_sub(before) < 64 * 1024,
                "{before} -> {after} KiB"
            );
        }
        // A harmless pickle in the same container passes the guard and reaches candle's reader.
        let plain = dir.path().join("plain.ckpt");
        std::fs::write(
            &plain,
            torch_zip(b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u."),
        )
        .unwrap();
        let err = StateDict::open(&plain).unwrap_err();
        assert!(
            matches!(err.kind, LoadErrorKind::NotACheckpoint(_)),
            "{err}"
        );
    }

    #[test]
    fn refuses_lengths_past_the_end() {
        let err = check_pickle(b"\x80\x02X\xff\xff\xff\x7fab").unwrap_err();
        assert!(err.contains("past the end"), "{err}");
    }

    #[test]
    fn accepts_a_plain_dict() {
        check_pickle(b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u.").unwrap();
    }
}
