//! Friendly scheduler names (as A1111 and diffusers users know them) → ComfyUI's sampler and
//! scheduler pair. The README reproduces [`FRIENDLY_NAMES`]; keep the two in step.

use crate::engine::sampling::samplers::SAMPLER_NAMES;
use crate::engine::sampling::schedulers::SCHEDULER_NAMES;

/// Base names. A trailing `Karras`, `Exponential`, `SGM Uniform`, `Beta`, `Simple`, `DDIM
/// Uniform`, `KL Optimal` or `Normal` picks the scheduler instead of the default here.
pub const FRIENDLY_NAMES: &[(&str, &str, &str)] = &[
    // (friendly name, sampler, default scheduler)
    ("Euler", "euler", "normal"),
    ("Euler a", "euler_ancestral", "normal"),
    ("Heun", "heun", "normal"),
    ("DPM2", "dpm_2", "normal"),
    ("DPM2 a", "dpm_2_ancestral", "normal"),
    ("DPM++", "dpmpp_2m", "karras"),
    ("DPM++ 2M", "dpmpp_2m", "normal"),
    ("DPM++ 2M SDE", "dpmpp_2m_sde", "normal"),
    ("DPM++ SDE", "dpmpp_sde", "normal"),
    ("DPM++ 2S a", "dpmpp_2s_ancestral", "normal"),
    ("DPM++ 3M SDE", "dpmpp_3m_sde", "exponential"),
    ("DPM fast", "dpm_fast", "normal"),
    ("DPM adaptive", "dpm_adaptive", "normal"),
    ("LMS", "lms", "normal"),
    ("DDIM", "ddim", "ddim_uniform"),
    ("DDPM", "ddpm", "normal"),
    ("PNDM", "ipndm", "normal"),
    ("DEIS", "deis", "normal"),
    ("UniPC", "uni_pc", "normal"),
    ("LCM", "lcm", "sgm_uniform"),
];

/// Scheduler suffixes, matched after normalising (lower case, `_`/`-` as spaces).
const SCHEDULER_SUFFIXES: &[(&str, &str)] = &[
    ("karras", "karras"),
    ("exponential", "exponential"),
    ("sgm uniform", "sgm_uniform"),
    ("beta", "beta"),
    ("simple", "simple"),
    ("ddim uniform", "ddim_uniform"),
    ("kl optimal", "kl_optimal"),
    ("linear quadratic", "linear_quadratic"),
    ("normal", "normal"),
];

/// The default when a request names no scheduler: ComfyUI's default KSampler (euler, normal).
pub const DEFAULT: &str = "euler";

fn normalise(name: &str) -> String {
    name.to_ascii_lowercase()
        .replace(['_', '-'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A ComfyUI scheduler name, checked.
pub fn check_scheduler(name: &str) -> Result<String, String> {
    if SCHEDULER_NAMES.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "unknown scheduler '{name}'; ComfyUI schedulers: {}",
            SCHEDULER_NAMES.join(", ")
        ))
    }
}

/// Resolves a friendly or ComfyUI name to (sampler, the scheduler it implies).
pub fn sampler(name: &str) -> Result<(String, String), String> {
    resolve_name(name)
}

fn resolve_name(name: &str) -> Result<(String, String), String> {
    let raw = name.trim();
    // ComfyUI's own names first: `dpmpp_2m`, `uni_pc_bh2`, …
    if SAMPLER_NAMES.contains(&raw) {
        return Ok((raw.to_owned(), "normal".to_owned()));
    }
    let wanted = normalise(raw);
    let lookup = |base: &str| -> Option<(String, String)> {
        if let Some((_, sampler, scheduler)) =
            FRIENDLY_NAMES.iter().find(|(f, _, _)| normalise(f) == base)
        {
            return Some(((*sampler).to_owned(), (*scheduler).to_owned()));
        }
        SAMPLER_NAMES
            .iter()
            .find(|s| normalise(s) == base)
            .map(|s| ((*s).to_owned(), "normal".to_owned()))
    };
    if let Some(found) = lookup(&wanted) {
        return Ok(found);
    }
    for (suffix, scheduler) in SCHEDULER_SUFFIXES {
        if let Some(base) = wanted.strip_suffix(suffix) {
            if let Some((sampler, _)) = lookup(base.trim_end()) {
                return Ok((sampler, (*scheduler).to_owned()));
            }
        }
    }
    let friendly: Vec<&str> = FRIENDLY_NAMES.iter().map(|(f, _, _)| *f).collect();
    Err(format!(
        "unknown scheduler type '{name}'; use a friendly name ({}, optionally followed by Karras, Exponential, SGM Uniform, Beta, …) or a ComfyUI sampler name",
        friendly.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        sampler(name).unwrap()
    }

    #[test]
    fn friendly_names_map_to_comfyui_pairs() {
        let p = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(pair("DPM++"), p("dpmpp_2m", "karras"));
        assert_eq!(pair("DPM++ 2M Karras"), p("dpmpp_2m", "karras"));
        assert_eq!(pair("dpm++_2m_karras"), p("dpmpp_2m", "karras"));
        assert_eq!(pair("Euler a"), p("euler_ancestral", "normal"));
        assert_eq!(pair("DDIM"), p("ddim", "ddim_uniform"));
        assert_eq!(pair("UniPC"), p("uni_pc", "normal"));
        assert_eq!(pair("DPM++ SDE Karras"), p("dpmpp_sde", "karras"));
        assert_eq!(pair("dpmpp_2m"), p("dpmpp_2m", "normal"));
        assert_eq!(pair("dpmpp_2m_sde_gpu"), p("dpmpp_2m_sde_gpu", "normal"));
        assert_eq!(pair("euler exponential"), p("euler", "exponential"));
        assert_eq!(check_scheduler("beta").unwrap(), "beta");
    }

    #[test]
    fn every_table_entry_is_a_real_sampler_and_scheduler() {
        for (name, sampler, scheduler) in FRIENDLY_NAMES {
            assert!(SAMPLER_NAMES.contains(sampler), "{name}: {sampler}");
            assert!(SCHEDULER_NAMES.contains(scheduler), "{name}: {scheduler}");
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_list() {
        let e = sampler("Turbo Magic").unwrap_err();
        assert!(e.contains("DPM++ 2M"), "{e}");
        assert!(check_scheduler("fast").is_err());
    }
}
