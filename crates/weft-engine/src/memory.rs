//! How much memory there is: the container's limit (cgroup v2 `memory.max`, cgroup v1
//! `memory.limit_in_bytes`) and the kernel's `MemAvailable`, read again before every model load
//! and every large allocation, and the estimates of what a model or a sampler step will need.
//!
//! The files are read from paths a [`MemoryProbe`] holds, so tests point it at files of their
//! own and inject a small limit.

use std::path::{Path, PathBuf};

/// Bytes kept free beyond every estimate for the process itself (allocator slack, the HTTP
/// server, buffers the estimates do not name).
pub const RESERVE: u64 = 512 << 20;

/// Where the memory figures are read from.
#[derive(Debug, Clone)]
pub struct MemoryProbe {
    /// Root of the cgroup file systems (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The process's cgroup membership (`/proc/self/cgroup`).
    pub self_cgroup: PathBuf,
    /// The kernel's memory summary (`/proc/meminfo`).
    pub meminfo: PathBuf,
}

impl Default for MemoryProbe {
    fn default() -> Self {
        MemoryProbe {
            cgroup_root: "/sys/fs/cgroup".into(),
            self_cgroup: "/proc/self/cgroup".into(),
            meminfo: "/proc/meminfo".into(),
        }
    }
}

/// One reading of the memory figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReading {
    /// The most this process may use: the cgroup's limit, or the machine's memory when there is
    /// none (or it is larger).
    pub limit: u64,
    /// What can still be allocated now: `MemAvailable`, and under a cgroup limit the limit less
    /// the cgroup's usage other than reclaimable file cache, whichever is smaller.
    pub available: u64,
    /// Which figure set `limit`.
    pub source: LimitSource,
}

/// Where the limit in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// The cgroup v2 `memory.max`.
    CgroupV2,
    /// The cgroup v1 `memory.limit_in_bytes`.
    CgroupV1,
    /// The machine's memory (`MemTotal` in `/proc/meminfo`).
    MemTotal,
}

impl std::fmt::Display for LimitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitSource::CgroupV2 => "the cgroup v2 limit (memory.max)",
            LimitSource::CgroupV1 => "the cgroup v1 limit (memory.limit_in_bytes)",
            LimitSource::MemTotal => "the machine's memory (MemTotal)",
        })
    }
}

/// A cgroup's limit and what it uses that cannot be reclaimed.
struct CgroupFigures {
    limit: u64,
    used: u64,
    version: LimitSource,
}

impl MemoryProbe {
    /// Reads the figures now. Files that are missing or unreadable count as "no limit"; without
    /// `/proc/meminfo` the machine is taken as unbounded (nothing is refused on a guess).
    pub fn read(&self) -> MemoryReading {
        let meminfo = std::fs::read_to_string(&self.meminfo).unwrap_or_default();
        let kib = |field: &str| {
            meminfo.lines().find_map(|line| {
                let rest = line.strip_prefix(field)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        let total = kib("MemTotal").map_or(u64::MAX, |k| k * 1024);
        let mut available = kib("MemAvailable").map_or(total, |k| k * 1024);
        let mut reading = MemoryReading {
            limit: total,
            available,
            source: LimitSource::MemTotal,
        };
        if let Some(cg) = self.cgroup() {
            if cg.limit < total {
                reading.limit = cg.limit;
                reading.source = cg.version;
            }
            available = available.min(cg.limit.saturating_sub(cg.used));
        }
        reading.available = available.min(reading.limit);
        reading
    }

    /// The limit of this process's own cgroup (v2 first, then v1's memory controller).
    fn cgroup(&self) -> Option<CgroupFigures> {
        let membership = std::fs::read_to_string(&self.self_cgroup).unwrap_or_default();
        let v2 = membership
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|path| self.candidates("", path));
        let v1 = membership
            .lines()
            .find_map(|l| {
                let (_, rest) = l.split_once(':')?;
                let (controllers, path) = rest.split_once(':')?;
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then_some(path)
            })
            .map(|path| self.candidates("memory", path));
        for dir in v2.into_iter().flatten() {
            if let Some(limit) = read_limit(&dir.join("memory.max")) {
                let used = read_number(&dir.join("memory.current")).unwrap_or(0);
                let file = stat_field(&dir.join("memory.stat"), "file").unwrap_or(0);
                return Some(CgroupFigures {
                    limit,
                    used: used.saturating_sub(file),
                    version: LimitSource::CgroupV2,
                });
            }
        }
        for dir in v1.into_iter().flatten() {
            if let Some(limit) = read_limit(&dir.join("memory.limit_in_bytes")) {
                let used = read_number(&dir.join("memory.usage_in_bytes")).unwrap_or(0);
                let cache = stat_field(&dir.join("memory.stat"), "total_cache")
                    .or_else(|| stat_field(&dir.join("memory.stat"), "cache"))
                    .unwrap_or(0);
                return Some(CgroupFigures {
                    limit,
                    used: used.saturating_sub(cache),
                    version: LimitSource::CgroupV1,
                });
            }
        }
        None
    }

    /// The folders that may hold the cgroup's files: its own path under the root (a host), then
    /// the root itself (a container, whose namespace shows its cgroup as the root).
    fn candidates(&self, controller: &str, path: &str) -> Vec<PathBuf> {
        let base = self.cgroup_root.join(controller);
        let own = base.join(path.trim_start_matches('/'));
        if own == base {
            vec![base]
        } else {
            vec![own, base]
        }
    }
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A limit file: a number of bytes, or `max` (v2) / a near-`i64::MAX` value (v1) for none.
fn read_limit(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let limit: u64 = text.trim().parse().ok()?;
    // cgroup v1 writes "no limit" as the largest page-aligned i64.
    (limit < (1 << 62)).then_some(limit)
}

fn stat_field(path: &Path, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == field).then(|| value.trim().parse().ok()).flatten()
    })
}

/// Not enough memory for a model or a computation, even after unloading what could be unloaded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} needs {} but only {} is available (limit in force: {} from {}); {advice}",
    human(*needed), human(*available), human(*limit), limit_source)]
pub struct OutOfMemory {
    /// What needed the memory ("loading 'x.safetensors'", "sampling 2 x 128x128 latents").
    pub what: String,
    /// Bytes it needs, including the headroom kept free ([`RESERVE`]).
    pub needed: u64,
    /// Bytes that could be allocated when it was checked.
    pub available: u64,
    /// The process's memory limit in bytes.
    pub limit: u64,
    /// Which figure set `limit`.
    pub limit_source: LimitSource,
    /// What to change.
    pub advice: String,
}

/// Hands the memory of freed tensors back to the system now. glibc keeps freed blocks below its
/// (adaptive) mmap threshold in its heaps, so a model's weights, mostly tensors of 1 to 30 MB, can
/// stay counted against the container after the model is unloaded; the next memory check would
/// then refuse what in fact fits.
pub fn return_freed_memory() {
    crate::allocator::release_kept();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free lists and returns
    // whole free pages with madvise.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The default model budget: this fraction of the smaller of the limit and what was available
/// at start. The rest is for activations while sampling and decoding, the output cache and the
/// server.
pub const MODEL_BUDGET_FRACTION: f64 = 0.75;

/// The model budget when none is given, and why.
pub fn default_model_budget(reading: &MemoryReading) -> u64 {
    (reading.limit.min(reading.available) as f64 * MODEL_BUDGET_FRACTION) as u64
}

/// Activation memory of one UNet call on `batch` latents of `height` x `width` in a dtype of
/// `dtype_size` bytes: ComfyUI's estimate (`BaseModel.memory_required`, 1 MiB per 100 latent
/// pixels per dtype byte, times the model's usage factor, 1 for SD1/SD2/SDXL). Weft's attention
/// is chunked, so this is an upper bound.
pub fn unet_activation_bytes(batch: usize, height: usize, width: usize, dtype_size: usize) -> u64 {
    let area = (batch * height * width) as f64;
    (area * dtype_size as f64 * 0.01 * (1u64 << 20) as f64) as u64
}

/// Activation memory of a full-frame VAE decode of `batch` latents of `height` x `width`:
/// ComfyUI's estimate (`VAE.memory_used_decode`, 2178 * 64 bytes per latent pixel per dtype byte).
pub fn vae_decode_bytes(batch: usize, height: usize, width: usize, dtype_size: usize) -> u64 {
    2178 * 64 * (batch * height * width * dtype_size) as u64
}

/// Activation memory of a full-frame VAE encode of `batch` images of `height` x `width` pixels:
/// ComfyUI's estimate (`VAE.memory_used_encode`, 1767 bytes per pixel per dtype byte).
pub fn vae_encode_bytes(batch: usize, height: usize, width: usize, dtype_size: usize) -> u64 {
    1767 * (batch * height * width * dtype_size) as u64
}

/// Bytes as a person reads them (`1.5 GiB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(files: &[(&str, &str)]) -> (tempfile::TempDir, MemoryProbe) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let probe = MemoryProbe {
            cgroup_root: dir.path().join("cgroup"),
            self_cgroup: dir.path().join("self_cgroup"),
            meminfo: dir.path().join("meminfo"),
        };
        (dir, probe)
    }

    const MEMINFO: &str =
        "MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n";

    #[test]
    fn the_cgroup_v2_limit_wins_when_smaller() {
        let (_dir, probe) = probe(&[
            ("meminfo", MEMINFO),
            ("self_cgroup", "0::/\n"),
            ("cgroup/memory.max", "12884901888\n"),
            ("cgroup/memory.current", "3000000000\n"),
            ("cgroup/memory.stat", "anon 1000000000\nfile 2000000000\n"),
        ]);
        let r = probe.read();
        assert_eq!(r.limit, 12884901888);
        assert_eq!(r.source, LimitSource::CgroupV2);
        // 12 GiB less 1 GB that is not file cache.
        assert_eq!(r.available, 12884901888 - 1_000_000_000);
        assert_eq!(default_model_budget(&r), (11884901888f64 * 0.75) as u64);
    }

    #[test]
    fn a_v1_cgroup_under_its_own_path_and_no_limit_as_a_huge_number() {
        let (_dir, probe) = probe(&[
            ("meminfo", MEMINFO),
            ("self_cgroup", "4:memory:/box/1\n1:cpu:/\n"),
            ("cgroup/memory/box/1/memory.limit_in_bytes", "2147483648\n"),
            ("cgroup/memory/box/1/memory.usage_in_bytes", "1073741824\n"),
            (
                "cgroup/memory/box/1/memory.stat",
                "cache 536870912\ntotal_cache 536870912\n",
            ),
        ]);
        let r = probe.read();
        assert_eq!((r.limit, r.source), (2147483648, LimitSource::CgroupV1));
        assert_eq!(r.available, 2147483648 - 536870912);

        let (_dir, probe) = probe_unlimited();
        let r = probe.read();
        assert_eq!(
            (r.limit, r.source),
            (24000000 * 1024, LimitSource::MemTotal)
        );
        assert_eq!(r.available, 20000000 * 1024);
    }

    fn probe_unlimited() -> (tempfile::TempDir, MemoryProbe) {
        probe(&[
            ("meminfo", MEMINFO),
            ("self_cgroup", "4:memory:/\n"),
            (
                "cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ])
    }

    #[test]
    fn nothing_readable_refuses_nothing() {
        let (_dir, probe) = probe(&[]);
        let r = probe.read();
        assert_eq!((r.limit, r.available), (u64::MAX, u64::MAX));
    }

    #[test]
    fn comfyui_estimates() {
        // SD1.5 at 512x512 with CFG: 2 x 64 x 64 latents in f32.
        assert_eq!(unet_activation_bytes(2, 64, 64, 4), 343_597_383);
        assert_eq!(vae_decode_bytes(1, 64, 64, 4), 2178 * 64 * 64 * 64 * 4);
        assert_eq!(vae_encode_bytes(1, 512, 512, 4), 1767 * 512 * 512 * 4);
        assert_eq!(human(1536 << 20), "1.5 GiB");
    }
}
