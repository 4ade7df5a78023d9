//! A check of a torch zip pickle before candle's reader sees it.
//!
//! candle's reader never executes anything, but it silently drops entries built from unknown
//! globals, allocates whatever length a string opcode claims, and clones memoised objects on
//! every reference, so a crafted pickle of a few bytes can expand exponentially. This pass walks
//! the opcodes of each `data.pkl` without building objects: it refuses opcodes candle does not
//! know, globals a tensor file never needs (`os.system`, `builtins.eval`, ...), lengths past the
//! end of the data, and object graphs that would expand past a fixed size, each with a message
//! that names the offending opcode or global.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The most objects candle's reader may build for one pickle (a torch state dict needs a few
/// dozen per tensor, so this allows well over 100k tensors while bounding memory to ~1 GB).
const MAX_OBJECTS: u64 = 5_000_000;

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

/// Checks every `data.pkl` of the zip at `path`; `Err` says what is wrong.
pub(crate) fn check_zip_pickle(path: &Path) -> Result<(), String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let entries = zip_entries(&mut file)?;
    let mut found = false;
    for entry in entries.iter().filter(|e| e.name.ends_with("data.pkl")) {
        found = true;
        if entry.method != 0 {
            return Err(format!(
                "'{}' is compressed (method {}); torch stores its pickles uncompressed",
                entry.name, entry.method
            ));
        }
        let data = read_entry(&mut file, entry)?;
        check_pickle(&data).map_err(|e| format!("'{}': {e}", entry.name))?;
    }
    if !found {
        return Err("the zip archive holds no data.pkl".into());
    }
    Ok(())
}

struct ZipEntry {
    name: String,
    method: u16,
    size: u64,
    local_offset: u64,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn read_at(file: &mut std::fs::File, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| format!("zip structure points past the end of the file ({e})"))?;
    Ok(buf)
}

/// The central directory of a zip (zip64 included).
fn zip_entries(file: &mut std::fs::File) -> Result<Vec<ZipEntry>, String> {
    let bad = |what: &str| format!("not a valid zip archive: {what}");
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let tail_len = len.min(22 + 65_535);
    let tail = read_at(file, len - tail_len, tail_len as usize)?;
    let eocd = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(&tail, i) == Some(0x0605_4b50))
        .ok_or_else(|| bad("no end of central directory"))?;
    let mut count = u64::from(u16_at(&tail, eocd + 10).ok_or_else(|| bad("short end record"))?);
    let mut cd_size = u64::from(u32_at(&tail, eocd + 12).ok_or_else(|| bad("short end record"))?);
    let mut cd_offset = u64::from(u32_at(&tail, eocd + 16).ok_or_else(|| bad("short end record"))?);
    if cd_offset == 0xFFFF_FFFF || count == 0xFFFF {
        // Zip64: the locator sits just before the end record.
        let locator = eocd
            .checked_sub(20)
            .filter(|&l| u32_at(&tail, l) == Some(0x0706_4b50))
            .ok_or_else(|| bad("no zip64 locator"))?;
        let z64 = u64_at(&tail, locator + 8).ok_or_else(|| bad("short zip64 locator"))?;
        let record = read_at(file, z64, 56)?;
        if u32_at(&record, 0) != Some(0x0606_4b50) {
            return Err(bad("no zip64 end record"));
        }
        count = u64_at(&record, 32).ok_or_else(|| bad("short zip64 record"))?;
        cd_size = u64_at(&record, 40).ok_or_else(|| bad("short zip64 record"))?;
        cd_offset = u64_at(&record, 48).ok_or_else(|| bad("short zip64 record"))?;
    }
    if cd_offset.saturating_add(cd_size) > len || cd_size > 256 * 1024 * 1024 {
        return Err(bad("central directory outside the file"));
    }
    let cd = read_at(file, cd_offset, cd_size as usize)?;
    let mut entries = Vec::new();
    let mut at = 0usize;
    for _ in 0..count {
        if u32_at(&cd, at) != Some(0x0201_4b50) {
            return Err(bad("broken central directory"));
        }
        let field = |off: usize| u16_at(&cd, at + off).ok_or_else(|| bad("short entry"));
        let method = field(10)?;
        let name_len = usize::from(field(28)?);
        let extra_len = usize::from(field(30)?);
        let comment_len = usize::from(field(32)?);
        let mut size = u64::from(u32_at(&cd, at + 24).ok_or_else(|| bad("short entry"))?);
        let mut local_offset = u64::from(u32_at(&cd, at + 42).ok_or_else(|| bad("short entry"))?);
        let name_at = at + 46;
        let name = cd
            .get(name_at..name_at + name_len)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .ok_or_else(|| bad("short entry name"))?;
        let extra = cd
            .get(name_at + name_len..name_at + name_len + extra_len)
            .ok_or_else(|| bad("short entry extra field"))?;
        // The zip64 extra field holds the sizes and offset that did not fit, in this order.
        let mut e = 0usize;
        while e + 4 <= extra.len() {
            let id = u16_at(extra, e).unwrap_or(0);
            let data_len = usize::from(u16_at(extra, e + 2).unwrap_or(0));
            if id == 0x0001 {
                let mut p = e + 4;
                if size == 0xFFFF_FFFF {
                    size = u64_at(extra, p).ok_or_else(|| bad("short zip64 field"))?;
                    p += 8;
                }
                if u32_at(&cd, at + 20) == Some(0xFFFF_FFFF) {
                    p += 8;
                }
                if local_offset == 0xFFFF_FFFF {
                    local_offset = u64_at(extra, p).ok_or_else(|| bad("short zip64 field"))?;
                }
            }
            e += 4 + data_len;
        }
        entries.push(ZipEntry {
            name,
            method,
            size,
            local_offset,
        });
        at = name_at + name_len + extra_len + comment_len;
    }
    Ok(entries)
}

fn read_entry(file: &mut std::fs::File, entry: &ZipEntry) -> Result<Vec<u8>, String> {
    let header = read_at(file, entry.local_offset, 30)?;
    if u32_at(&header, 0) != Some(0x0403_4b50) {
        return Err(format!("broken local header for '{}'", entry.name));
    }
    let name_len = u64::from(u16_at(&header, 26).unwrap_or(0));
    let extra_len = u64::from(u16_at(&header, 28).unwrap_or(0));
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let start = entry.local_offset + 30 + name_len + extra_len;
    if start.saturating_add(entry.size) > file_len {
        return Err(format!(
            "'{}' claims {} bytes past the end of the file",
            entry.name, entry.size
        ));
    }
    read_at(file, start, entry.size as usize)
}

/// Walks the opcodes candle's reader understands, tracking how many objects each stack slot
/// stands for (memo references included, since candle copies them).
pub(crate) fn check_pickle(data: &[u8]) -> Result<(), String> {
    // None marks a MARK on the stack.
    let mut stack: Vec<Option<u64>> = Vec::new();
    let mut memo: HashMap<u32, u64> = HashMap::new();
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
    fn pop(stack: &mut Vec<Option<u64>>) -> Result<u64, String> {
        stack
            .pop()
            .flatten()
            .ok_or_else(|| "pickle pops an empty stack".to_string())
    }
    fn pop_to_mark(stack: &mut Vec<Option<u64>>) -> Result<u64, String> {
        let mut sum = 0u64;
        loop {
            match stack.pop() {
                Some(Some(n)) => sum = sum.saturating_add(n),
                Some(None) => return Ok(sum),
                None => return Err("pickle has no matching mark".into()),
            }
        }
    }
    loop {
        let at = pos;
        let op = *take(&mut pos, 1)?.first().unwrap_or(&0);
        let pushed: Option<u64> = match op {
            0x80 => {
                take(&mut pos, 1)?;
                None
            }
            b'c' => {
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                if !allowed_global(&module, &name) {
                    return Err(format!(
                        "global '{module}.{name}' at byte {at} is not part of a tensor file"
                    ));
                }
                Some(1)
            }
            b'q' => {
                let id = u32::from(take(&mut pos, 1)?[0]);
                memo.insert(id, stack.last().copied().flatten().unwrap_or(1));
                None
            }
            b'r' => {
                let id = u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap_or([0; 4]));
                memo.insert(id, stack.last().copied().flatten().unwrap_or(1));
                None
            }
            b'h' | b'j' => {
                let id = if op == b'h' {
                    u32::from(take(&mut pos, 1)?[0])
                } else {
                    u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap_or([0; 4]))
                };
                Some(
                    *memo
                        .get(&id)
                        .ok_or_else(|| format!("memo {id} read at byte {at} was never written"))?,
                )
            }
            b'X' => {
                let len = u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap_or([0; 4]));
                take(&mut pos, len as usize)?;
                Some(1)
            }
            b'J' => {
                take(&mut pos, 4)?;
                Some(1)
            }
            b'K' => {
                take(&mut pos, 1)?;
                Some(1)
            }
            b'M' => {
                take(&mut pos, 2)?;
                Some(1)
            }
            b'G' => {
                take(&mut pos, 8)?;
                Some(1)
            }
            0x8a => {
                let len = take(&mut pos, 1)?[0];
                take(&mut pos, usize::from(len))?;
                Some(1)
            }
            b')' | b'N' | 0x88 | 0x89 | b'}' | b'd' | b']' => Some(1),
            b'(' => {
                stack.push(None);
                None
            }
            b'Q' => Some(pop(&mut stack)? + 1),
            b't' => Some(pop_to_mark(&mut stack)? + 1),
            0x85 => Some(pop(&mut stack)? + 1),
            0x86 => Some(pop(&mut stack)? + pop(&mut stack)? + 1),
            0x87 => Some(pop(&mut stack)? + pop(&mut stack)? + pop(&mut stack)? + 1),
            b'R' | b'b' | 0x81 => Some(pop(&mut stack)? + pop(&mut stack)? + 1),
            b'a' => {
                let value = pop(&mut stack)?;
                Some(pop(&mut stack)? + value)
            }
            b's' => {
                let value = pop(&mut stack)? + pop(&mut stack)?;
                Some(pop(&mut stack)? + value)
            }
            b'e' | b'u' => {
                let values = pop_to_mark(&mut stack)?;
                Some(pop(&mut stack)? + values)
            }
            b'.' => return Ok(()),
            other => {
                return Err(format!(
                    "opcode 0x{other:02x} at byte {at} is not supported by the tensor reader"
                ))
            }
        };
        if let Some(n) = pushed {
            if n > MAX_OBJECTS {
                return Err(format!(
                    "the pickle expands to more than {MAX_OBJECTS} objects (at byte {at})"
                ));
            }
            stack.push(Some(n));
        }
        if stack.len() > 1_000_000 {
            return Err("the pickle's stack grows past a million entries".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(err.contains("expands"), "{err}");
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
