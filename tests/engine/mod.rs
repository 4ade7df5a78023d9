//! Engine parity tests against committed reference fixtures (`tools/parity/*.py` regenerate them).

pub(crate) mod brownian_parity;
pub(crate) mod clip_parity;
pub(crate) mod clip_vision_parity;
pub(crate) mod cond_patches_parity;
pub(crate) mod controlnet_parity;
pub(crate) mod custom_sampling_parity;
pub(crate) mod gligen_parity;
pub(crate) mod load;
pub(crate) mod lora_parity;
pub(crate) mod merge_parity;
pub(crate) mod model_patches_parity;
pub(crate) mod preprocess_parity;
pub(crate) mod rng_parity;
pub(crate) mod sampler_parity;
pub(crate) mod unet_parity;
pub(crate) mod upscale_parity;
pub(crate) mod util;
pub(crate) mod vae_parity;
