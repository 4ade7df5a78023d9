//! Entry points for fuzz targets (`fuzz/` at the repository root, and the stable corpus replay
//! in the server's tests): each takes arbitrary bytes and must return, without panicking and in
//! bounded time and memory, whatever they hold. Errors are the expected outcome; they are dropped.

use std::io::Cursor;
use std::path::Path;

use crate::load::file::{check_safetensors_header, StateDict};
use crate::load::pickle_guard::check_pickle;

/// A safetensors file's first bytes: the 8-byte header length, then the JSON header (the data
/// after it need not be there; its length is taken as the file's).
pub fn safetensors_header(data: &[u8]) {
    let Some((length, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let header_len = u64::from_le_bytes(*length);
    let _ = check_safetensors_header(
        Path::new("fuzz.safetensors"),
        &mut Cursor::new(rest),
        header_len,
        data.len() as u64,
    );
}

/// A pickle as a torch file's `data.pkl`: the guard walks it, and what the guard lets through
/// is read by candle's pickle reader (from a torch zip in a temporary file), as a loader would.
pub fn pickle(data: &[u8]) {
    if check_pickle(data).is_err() {
        return;
    }
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("fuzz.ckpt");
    if std::fs::write(&path, torch_zip(data)).is_ok() {
        let _ = StateDict::open(&path);
    }
}

/// A stored (uncompressed) torch-style zip holding `pickle` as `archive/data.pkl`.
pub fn torch_zip(pickle: &[u8]) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }
    let name = b"archive/data.pkl";
    let crc = crc32(pickle);
    let mut out = Vec::new();
    let common = |out: &mut Vec<u8>| {
        out.extend_from_slice(&20u16.to_le_bytes()); // version needed
        out.extend_from_slice(&0u16.to_le_bytes()); // flags
        out.extend_from_slice(&0u16.to_le_bytes()); // stored
        out.extend_from_slice(&0u32.to_le_bytes()); // time, date
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(pickle.len() as u32).to_le_bytes());
        out.extend_from_slice(&(pickle.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // extra
    };
    out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    common(&mut out);
    out.extend_from_slice(name);
    out.extend_from_slice(pickle);
    let cd_offset = out.len();
    out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    out.extend_from_slice(&20u16.to_le_bytes()); // version made by
    common(&mut out);
    out.extend_from_slice(&[0u8; 10]); // comment length, disk, internal and external attrs
    out.extend_from_slice(&0u32.to_le_bytes()); // local header offset
    out.extend_from_slice(name);
    let cd_size = out.len() - cd_offset;
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&(cd_size as u32).to_le_bytes());
    out.extend_from_slice(&(cd_offset as u32).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}
