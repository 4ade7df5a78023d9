//! Engine parity tests against committed reference fixtures (`tools/parity/*.py` regenerate them).

mod clip_parity;
mod load;
mod lora_parity;
mod preprocess_parity;
mod rng_parity;
mod sampler_parity;
mod unet_parity;
mod util;
mod vae_parity;
