// The test of 16-comfy-frontend against an early-2025 ComfyUI frontend (1.12.14, as
// `./run.sh test` fetches it; WEFT_COMFY_FRONTEND_EARLY names its static folder): users who keep
// an older ComfyUI frontend get the same workflow, queue and image.
import { allowExternal, requires, runFrontend, skipFor } from './16-comfy-frontend.test.mjs';

const FRONTEND = process.env.WEFT_COMFY_FRONTEND_EARLY;

export const name = "ComfyUI's early-2025 frontend: SD1.5 default template, queued, image shown, no 404s";
export { allowExternal, requires };
export const skip = () => skipFor(FRONTEND, 'WEFT_COMFY_FRONTEND_EARLY');
export const run = (context) => runFrontend(FRONTEND, context);
